#!/usr/bin/env python3
"""Write on one pooled connection, read on another (run by tests/tests/causal_scope.rs).

No causal token is carried: pgtier's causal_scope alone decides whether the read sees the
write. psycopg 3 with two connections, and an asyncpg pool whose two connections are held at
once (one writes, the other reads), as a web app's pool hands out connections.

Usage: causal_scope.py HOST PORT USER PASSWORD DB TABLE ITERATIONS
Prints "psycopg stale=N" and "asyncpg stale=N" (reads that did not see the row just written).
"""

import asyncio
import sys

import asyncpg
import psycopg


def run_psycopg(ci, table, n):
    stale = 0
    with psycopg.connect(**ci, autocommit=True) as w, psycopg.connect(**ci, autocommit=True) as r:
        for i in range(n):
            row_id = w.execute(f"INSERT INTO {table} (v) VALUES (%s) RETURNING id", (i,)).fetchone()[0]
            found = r.execute(f"SELECT count(*) FROM {table} WHERE id = %s", (row_id,)).fetchone()[0]
            stale += found == 0
    return stale


async def run_asyncpg(ci, table, n):
    stale = 0
    pool = await asyncpg.create_pool(min_size=2, max_size=2, **ci)
    try:
        async with pool.acquire() as w, pool.acquire() as r:
            for i in range(n):
                row_id = await w.fetchval(f"INSERT INTO {table} (v) VALUES ($1) RETURNING id", i)
                found = await r.fetchval(f"SELECT count(*) FROM {table} WHERE id = $1", row_id)
                stale += found == 0
    finally:
        await pool.close()
    return stale


def main():
    host, port, user, password, db, table, n = sys.argv[1:8]
    n = int(n)
    ci = dict(host=host, port=int(port), user=user, password=password, dbname=db)
    print(f"psycopg stale={run_psycopg(ci, table, n)}", flush=True)
    aci = dict(host=host, port=int(port), user=user, password=password, database=db)
    print(f"asyncpg stale={asyncio.run(run_asyncpg(aci, table, n))}", flush=True)


if __name__ == "__main__":
    main()
