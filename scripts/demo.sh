#!/usr/bin/env bash
# The one-command local demo: a primary + 2 streaming replicas + pgtier, nothing to configure.
# Extra arguments go to pgtier-local (e.g. --duration 60, --port 6432).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-postgres.sh
exec cargo run --release -q -p pgtier-kit --bin pgtier-local -- "$@"
