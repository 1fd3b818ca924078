#!/usr/bin/env bash
# Runs pgtier's protocol fuzzer (tests/src/fuzz, binary pgtier-fuzz) for a long time against
# a debug build of pgtier (debug assertions and overflow checks on), with the fuzzer itself
# built in release (its SCRAM logins are slow unoptimised).
#
#   scripts/fuzz.sh [SECONDS] [extra pgtier-fuzz args, e.g. --seed 42 --concurrency 32]
#
# SECONDS defaults to 3600. Prints the seed at the start and a progress line every 30 s; exits 1
# on the first failure with the failing batch's connection seeds (replay one with
# `target/release/pgtier-fuzz --conn-seed S`) and pgtier's log tail.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-postgres.sh
seconds="${1:-3600}"
shift || true
cargo build --workspace --bins
cargo build --release -p pgtier-kit --bin pgtier-fuzz
# Raise the open-file limit as far as allowed: each fuzz connection is a socket on both sides.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
PGTIER_BIN="${PGTIER_BIN:-target/debug/pgtier}" \
  exec target/release/pgtier-fuzz --seconds "$seconds" "$@"
