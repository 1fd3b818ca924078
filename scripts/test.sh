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
echo "== build"
cargo build --workspace --bins
echo "== tests"
cargo test --workspace --no-fail-fast -- --test-threads "${PGTIER_TEST_THREADS:-4}"
echo "== a slice of the tests again, with clients over TLS (PGTIER_TEST_TLS=1)"
PGTIER_TEST_TLS=1 cargo test -p pgtier-kit --no-fail-fast \
  --test basics --test routing --test pooling --test prepared --test copy --test streaming --test app \
  -- --test-threads "${PGTIER_TEST_THREADS:-4}"
