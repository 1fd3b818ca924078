#!/bin/bash
# Runs once on the primary's first start (docker-entrypoint-initdb.d): the app's role and
# database, a replication role, and pg_hba entries for both.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" <<SQL
CREATE ROLE app LOGIN PASSWORD 'app';
CREATE DATABASE app OWNER app;
CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD 'replicator';
SQL
cat >> "$PGDATA/pg_hba.conf" <<HBA
host replication replicator all scram-sha-256
host all all all scram-sha-256
HBA
