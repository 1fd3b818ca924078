#!/bin/bash
# A streaming replica: on first start, clone the primary with pg_basebackup (-R writes
# standby.signal and primary_conninfo), then run postgres as the postgres user.
set -euo pipefail
: "${PRIMARY_HOST:=primary}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  mkdir -p "$PGDATA"
  chown postgres:postgres "$PGDATA"
  chmod 700 "$PGDATA"
  until gosu postgres pg_isready -h "$PRIMARY_HOST" -U replicator -d postgres -q; do
    echo "waiting for $PRIMARY_HOST"; sleep 1
  done
  gosu postgres env PGPASSWORD=replicator pg_basebackup -h "$PRIMARY_HOST" -U replicator \
    -D "$PGDATA" -R -X stream -c fast
fi
# A hot standby needs max_connections at least the primary's (200 in compose.yaml), else
# its recovery pauses at start; two pgtier processes may open 2 x 21 connections here.
exec gosu postgres postgres -c hot_standby=on -c hot_standby_feedback=on -c max_connections=200
