#!/bin/bash
# Instructions per transaction of pgtier under callgrind (deterministic: unaffected by a noisy
# machine). Needs valgrind and a running cluster with pgbench tables that user app/app can read:
#   target/release/pgtier-local --no-load --duration 60m      # prints the node ports
#   PGPASSWORD=postgres pgbench -i -s 10 -h 127.0.0.1 -p PRIMARY -U postgres app
#   PGPASSWORD=postgres psql -h 127.0.0.1 -p PRIMARY -U postgres app \
#       -c 'GRANT ALL ON ALL TABLES IN SCHEMA public TO app'
# and a pgtier config CONFIG that listens on 127.0.0.1:6499 with those nodes (pool_size 10,
# log_level "warn", users app/app). Then:
#   benches/scripts/callgrind.sh target/release/pgtier CONFIG OUT [pgbench args, e.g. -S -M extended]
# 8 clients x 500 transactions warm up, then 8 x 2,500 are counted.
set -u
BIN=$1; CONFIG=$2; OUT=$3; shift 3
rm -f "$OUT".*
valgrind --tool=callgrind --callgrind-out-file="$OUT.%p" "$BIN" -c "$CONFIG" > "$OUT.log" 2>&1 &
for _ in $(seq 1 60); do pg_isready -h 127.0.0.1 -p 6499 -q && break; sleep 1; done
PGPASSWORD=app pgbench -n -c 8 -j 1 -t 500 -h 127.0.0.1 -p 6499 -U app "$@" app > /dev/null 2>&1
callgrind_control -z > /dev/null 2>&1
PGPASSWORD=app pgbench -n -c 8 -j 1 -t 2500 -h 127.0.0.1 -p 6499 -U app "$@" app 2>&1 | grep -E "processed"
callgrind_control -d > /dev/null 2>&1
pkill -INT -f "callgrind.*$BIN"
for _ in $(seq 1 30); do pgrep -f "callgrind.*$BIN" > /dev/null || break; sleep 1; done
F=$(ls "$OUT".*.1)
T=$(callgrind_annotate --auto=no "$F" 2>/dev/null | grep "PROGRAM TOTALS" | awk '{print $1}' | tr -d ,)
echo "instructions/tx: $((T / 20000))"
