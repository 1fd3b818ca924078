#!/usr/bin/env bash
# Validates docker/ offline (no container engine needed; none runs on the CI machines):
# - compose.yaml against the Compose Specification's JSON schema (bundled in check-jsonschema,
#   PyPI, pinned), and every local file it builds from or mounts exists;
# - the certs service's script (docker/certs/make-certs.sh) run here: it makes a CA and pgtier's
#   certificate, and a second run keeps them;
# - both processes' pgtier-N.toml with `pgtier check`, their TLS paths pointed at those
#   certificates, and the pair differing only where two processes on one port must;
# - docker/k8s/ with scripts/validate-k8s.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q 'check-jsonschema==0.39.0' \
  || python3 -m pip install -q --break-system-packages 'check-jsonschema==0.39.0'
check-jsonschema --builtin-schema vendor.compose-spec docker/compose.yaml

# Local paths in compose.yaml: "./x:/in/container" mounts and build contexts/dockerfiles.
for f in $(grep -oE '^\s+- \./[^:]+' docker/compose.yaml | sed 's/.*- //'); do
  test -e "docker/$f" || { echo "compose.yaml mounts docker/$f, which does not exist"; exit 1; }
done
for d in $(grep -oE 'dockerfile: \S+' docker/compose.yaml | sed 's/dockerfile: //'); do
  case "$d" in docker/*) p="$d" ;; *) p="docker/$d" ;; esac
  test -f "$p" || { echo "compose.yaml builds from $p, which does not exist"; exit 1; }
done

cargo build -q -p pgtier --bin pgtier
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
certs() {
  PGTIER_TLS_DIR="$tmp/tls" APP_TLS_DIR="$tmp/app" TLS_OWNER="$(id -u):$(id -g)" \
    sh docker/certs/make-certs.sh
}
certs | grep -q "new CA"
certs | grep -q "keeping the CA"
test -s "$tmp/app/ca.crt"
for n in 1 2; do
  sed "s|/etc/pgtier/tls/|$tmp/tls/|g" "docker/pgtier-$n.toml" >"$tmp/pgtier-$n.toml"
  target/debug/pgtier check "$tmp/pgtier-$n.toml"
done
# The two files differ only in peer_id, peer_listen and metrics_listen (and comments).
strip() { grep -vE '^\s*(#|$)|^(peer_id|peer_listen|metrics_listen) =' "$1"; }
diff <(strip docker/pgtier-1.toml) <(strip docker/pgtier-2.toml) \
  || { echo "pgtier-1.toml and pgtier-2.toml differ beyond peer_id, peer_listen, metrics_listen"; exit 1; }
echo "docker/compose.yaml: valid (Compose Specification), its files exist; make-certs.sh works; pgtier-1/2.toml valid"

scripts/validate-k8s.sh
