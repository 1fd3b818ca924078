#!/usr/bin/env bash
# The one-command local demo, nothing to configure: a primary + 2 streaming replicas, pgtier in
# front of them, the bundled app (pgtier-app) through pgtier, and a short load run whose summary
# is printed. Runs until Ctrl-C. Extra arguments go to pgtier-local:
#   --port N (pgtier), --duration SECS, --no-load, --load-secs N (default 10).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-postgres.sh
exec cargo run --release -q -p pgtier-kit --bin pgtier-local -- "$@"
