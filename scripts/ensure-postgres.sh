#!/usr/bin/env bash
# Installs the PostgreSQL server binaries, psql and pgbench with apt-get when they are missing,
# and makes sure the unprivileged `postgres` user exists (as root the kit runs Postgres as it).
set -euo pipefail

have_pg() {
  command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
}
if ! have_pg || ! command -v pgbench >/dev/null 2>&1 || ! command -v psql >/dev/null 2>&1; then
  echo "== installing PostgreSQL (server binaries, psql, pgbench)"
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql postgresql-contrib >/dev/null
fi
if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
  useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
fi
