#!/usr/bin/env bash
# Runs pgtier's whole test suite against real PostgreSQL clusters started by the test kit.
# Works on a fresh Debian machine: installs the PostgreSQL server binaries if they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-postgres.sh
echo "== python drivers (tests/tests/drivers.rs)"
python3 -m pip install -q -r tests/python/requirements.txt \
  || python3 -m pip install -q --break-system-packages -r tests/python/requirements.txt
echo "== node-postgres (tests/tests/drivers.rs; skipped there if node is missing)"
if command -v node >/dev/null && command -v npm >/dev/null; then
  (cd tests/node && (npm ci --no-audit --no-fund || npm install --no-audit --no-fund))
else
  echo "node/npm not installed: the node-postgres test will be skipped"
fi
echo "== python driver/ORM matrix (tests/tests/drivers_python.rs; skipped there only if pip cannot install it)"
if python3 -m pip install -q -r tests/python/requirements-matrix.txt \
  || python3 -m pip install -q --break-system-packages -r tests/python/requirements-matrix.txt; then
  :
else
  echo "NOTICE: tests/python/requirements-matrix.txt could not be installed: its tests will be skipped"
  export PGTIER_PY_MATRIX_UNAVAILABLE=1
fi
echo "== end of python driver/ORM matrix"
echo "== more drivers: JDBC, Ruby pg, PHP PDO pgsql, Node postgres, sqlx (tests/tests/drivers_more.rs)"
# A toolchain that cannot be installed (not root, a registry down) is recorded in
# target/drivers-unavailable/NAME and its test prints a NOTICE and is skipped; one that is
# installed but broken fails its test.
unavail=target/drivers-unavailable
rm -rf "$unavail" && mkdir -p "$unavail"
need=()
command -v java >/dev/null || need+=(default-jdk-headless)
test -f /usr/share/java/postgresql.jar || need+=(libpostgresql-jdbc-java)
command -v ruby >/dev/null || need+=(ruby)
ruby -e "require 'pg'" 2>/dev/null || need+=(ruby-pg)
command -v php >/dev/null || need+=(php-cli)
php -r "exit(extension_loaded('pdo_pgsql') ? 0 : 1);" 2>/dev/null || need+=(php-pgsql)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing ${need[*]}"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; } \
      || echo "NOTICE: apt-get install ${need[*]} failed"
  else
    echo "NOTICE: not root (or no apt-get): cannot install ${need[*]}"
  fi
fi
{ command -v java >/dev/null && test -f /usr/share/java/postgresql.jar; } \
  || { echo "NOTICE: JDBC unavailable: its test will be skipped"; echo "java or libpostgresql-jdbc-java could not be installed" >"$unavail/jdbc"; }
ruby -e "require 'pg'" 2>/dev/null \
  || { echo "NOTICE: Ruby pg unavailable: its test will be skipped"; echo "ruby or ruby-pg could not be installed" >"$unavail/ruby-pg"; }
php -r "exit(extension_loaded('pdo_pgsql') ? 0 : 1);" 2>/dev/null \
  || { echo "NOTICE: PHP pdo_pgsql unavailable: its test will be skipped"; echo "php-cli or php-pgsql could not be installed" >"$unavail/php-pdo-pgsql"; }
if ! command -v node >/dev/null || ! test -d tests/node/node_modules/postgres; then
  echo "NOTICE: node or the npm package postgres unavailable: its test will be skipped"
  echo "node, npm or the npm registry unavailable" >"$unavail/node-postgres-js"
fi
# sqlx: its own cargo project and target dir (with sqlx's macros; the test builds the part that
# uses them once its database is up). A fetch failure (crates.io down) skips its test; a build
# failure fails the script.
if CARGO_TARGET_DIR=target/sqlx cargo fetch --manifest-path tests/sqlx/Cargo.toml; then
  CARGO_TARGET_DIR=target/sqlx cargo build --manifest-path tests/sqlx/Cargo.toml
else
  echo "NOTICE: the sqlx crates could not be fetched: its test will be skipped"
  echo "crates.io unavailable for tests/sqlx" >"$unavail/sqlx"
fi
echo "== build"
cargo build --workspace --bins
echo "== docker/ and docker/k8s/ validated offline (scripts/validate-docker.sh; no container engine here)"
command -v openssl >/dev/null || { [ "$(id -u)" = 0 ] && apt-get install -y -qq openssl >/dev/null; } || true
if { python3 -m pip install -q 'check-jsonschema==0.39.0' 'kubernetes-validate==1.37.0' \
     || python3 -m pip install -q --break-system-packages 'check-jsonschema==0.39.0' 'kubernetes-validate==1.37.0'; } \
   && command -v openssl >/dev/null; then
  scripts/validate-docker.sh
else
  echo "NOTICE: check-jsonschema, kubernetes-validate or openssl unavailable: docker/ not validated"
fi
echo "== tests"
cargo test --workspace --no-fail-fast -- --test-threads "${PGTIER_TEST_THREADS:-4}"
echo "== a slice of the tests again, with clients over TLS (PGTIER_TEST_TLS=1)"
PGTIER_TEST_TLS=1 cargo test -p pgtier-kit --no-fail-fast \
  --test basics --test routing --test pooling --test prepared --test copy --test streaming --test app \
  --test app_bad_input --test app_tls \
  -- --test-threads "${PGTIER_TEST_THREADS:-4}"
