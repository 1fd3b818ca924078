#!/bin/sh
# One-shot (the compose `certs` service): a CA and pgtier's server certificate for TLS between
# the app and pgtier. Writes
#   $PGTIER_TLS_DIR/{ca.crt,pgtier.crt,pgtier.key}  (pgtier's volume; the key 0600, owned by
#                                                     $TLS_OWNER, the uid pgtier runs as)
#   $APP_TLS_DIR/ca.crt                              (the app's volume: the CA only)
# Nothing is regenerated while the existing certificate chains to the CA, names the same
# $PGTIER_CERT_SANS and is valid for at least another day, so restarts keep the CA the app
# trusts. The CA's private key is deleted after signing: it can sign nothing else.
set -eu

pgtier_dir=${PGTIER_TLS_DIR:-/tls/pgtier}
app_dir=${APP_TLS_DIR:-/tls/app}
sans=${PGTIER_CERT_SANS:-DNS:pgtier,DNS:localhost,IP:127.0.0.1}
owner=${TLS_OWNER:-10001:10001}
days=${PGTIER_CERT_DAYS:-825}

mkdir -p "$pgtier_dir" "$app_dir"

current() {
    [ -s "$pgtier_dir/ca.crt" ] && [ -s "$pgtier_dir/pgtier.crt" ] && [ -s "$pgtier_dir/pgtier.key" ] \
        && [ "$(cat "$pgtier_dir/sans" 2>/dev/null)" = "$sans" ] \
        && openssl verify -x509_strict -CAfile "$pgtier_dir/ca.crt" "$pgtier_dir/pgtier.crt" >/dev/null 2>&1 \
        && openssl x509 -in "$pgtier_dir/pgtier.crt" -noout -checkend 86400 >/dev/null 2>&1
}

if current; then
    echo "certs: keeping the CA and pgtier certificate in $pgtier_dir (SANs $sans)"
else
    echo "certs: new CA and pgtier certificate for $sans (valid $days days)"
    umask 077
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    # EC P-256 keys (PKCS#8 PEM) and SHA-256 signatures: what rustls (pgtier, the app) and
    # libpq verify. Extensions come only from the files below (x509 -req uses no defaults).
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$tmp/ca.key"
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$tmp/pgtier.key"
    printf '%s\n' 'basicConstraints=critical,CA:TRUE,pathlen:0' \
        'keyUsage=critical,keyCertSign,cRLSign' 'subjectKeyIdentifier=hash' >"$tmp/ca.ext"
    printf '%s\n' 'basicConstraints=critical,CA:FALSE' 'keyUsage=critical,digitalSignature' \
        'extendedKeyUsage=serverAuth' "subjectAltName=$sans" 'subjectKeyIdentifier=hash' \
        'authorityKeyIdentifier=keyid' >"$tmp/pgtier.ext"
    openssl req -new -key "$tmp/ca.key" -subj "/CN=pgtier compose CA" -out "$tmp/ca.csr"
    openssl x509 -req -in "$tmp/ca.csr" -key "$tmp/ca.key" -sha256 -days 3650 \
        -set_serial "0x$(openssl rand -hex 16)" -extfile "$tmp/ca.ext" -out "$tmp/ca.crt"
    openssl req -new -key "$tmp/pgtier.key" -subj "/CN=pgtier" -out "$tmp/pgtier.csr"
    openssl x509 -req -in "$tmp/pgtier.csr" -CA "$tmp/ca.crt" -CAkey "$tmp/ca.key" -sha256 \
        -days "$days" -set_serial "0x$(openssl rand -hex 16)" -extfile "$tmp/pgtier.ext" \
        -out "$tmp/pgtier.crt"
    openssl verify -x509_strict -CAfile "$tmp/ca.crt" "$tmp/pgtier.crt" >/dev/null
    chmod 0644 "$tmp/ca.crt" "$tmp/pgtier.crt"
    chmod 0600 "$tmp/pgtier.key"
    chown "$owner" "$tmp/pgtier.key"
    # Key before certificate, each by rename, so a reader never pairs a new cert with an old key
    # for long (pgtier reads them at start; the app only the CA).
    for f in pgtier.key pgtier.crt ca.crt; do
        cp -p "$tmp/$f" "$pgtier_dir/.$f.new" && mv -f "$pgtier_dir/.$f.new" "$pgtier_dir/$f"
    done
    printf '%s\n' "$sans" >"$pgtier_dir/sans"
fi
cp "$pgtier_dir/ca.crt" "$app_dir/.ca.crt.new"
chmod 0644 "$app_dir/.ca.crt.new"
mv -f "$app_dir/.ca.crt.new" "$app_dir/ca.crt"
openssl x509 -in "$pgtier_dir/pgtier.crt" -noout -subject -enddate -ext subjectAltName
