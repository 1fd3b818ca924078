#!/usr/bin/env bash
# Runs pgtier's whole test suite against real PostgreSQL clusters started by the test kit.
# Works on a fresh Debian machine: installs the PostgreSQL server binaries if they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-postgres.sh
echo "== python drivers (tests/tests/drivers.rs)"
python3 -m pip install -q -r tests/python/requirements.txt \
  || python3 -m pip install -q --break-system-packages -r tests/python/requirements.txt
echo "== build"
cargo build --workspace --bins
echo "== tests"
cargo test --workspace --no-fail-fast -- --test-threads "${PGTIER_TEST_THREADS:-4}"
