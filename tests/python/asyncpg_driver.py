#!/usr/bin/env python3
"""asyncpg through pgtier in transaction mode (run by tests/tests/drivers.rs).

asyncpg prepares every statement under per-connection names (__asyncpg_stmt_1__, ...) and
keeps them in its statement cache, so on shared server connections the names clash or go
missing unless the pooler renames them: the classic breaker of transaction pooling.

Usage: asyncpg_driver.py HOST PORT USER DB [CONNECTIONS] [ITERATIONS]
Prints "asyncpg OK ..." and exits 0 when every check passed.
"""

import asyncio
import sys
import time

import asyncpg


def kwargs(argv):
    return dict(host=argv[1], port=int(argv[2]), user=argv[3], database=argv[4], timeout=30)


async def setup(kw):
    conn = await asyncpg.connect(**kw)
    try:
        await conn.execute(
            """
            DROP TABLE IF EXISTS asyncpg_rows;
            CREATE TABLE asyncpg_rows (conn int NOT NULL, v int NOT NULL);
            DROP TYPE IF EXISTS asyncpg_mood;
            CREATE TYPE asyncpg_mood AS ENUM ('ok', 'meh', 'bad');
            """
        )
    finally:
        await conn.close()


async def worker(kw, n, iterations):
    conn = await asyncpg.connect(**kw)
    try:
        for i in range(iterations):
            # The same text on every connection: same asyncpg name, different servers.
            v = await conn.fetchval("SELECT $1::int + 1", i)
            assert v == i + 1, (n, i, v)
            if i % 20 == 0:
                row = await conn.fetchrow(
                    "SELECT $1::text || '-' || $2::text AS s, $3::int8 * 2 AS d",
                    f"c{n}",
                    str(i),
                    i,
                )
                assert (row["s"], row["d"]) == (f"c{n}-{i}", 2 * i), (n, i, row)
                k = i % 7 + 1
                rows = await conn.fetch("SELECT g FROM generate_series(1, $1::int) g", k)
                assert [r["g"] for r in rows] == list(range(1, k + 1)), (n, i, rows)
                # An explicit prepared statement object, used twice.
                stmt = await conn.prepare("SELECT $1::int * 3")
                assert await stmt.fetchval(i) == 3 * i
                assert await stmt.fetchval(i + 1) == 3 * (i + 1)
                # A user type: asyncpg introspects it with its own prepared query.
                mood = ["ok", "meh", "bad"][i % 3]
                assert await conn.fetchval("SELECT $1::asyncpg_mood", mood) == mood
                # A connection-specific statement text.
                assert await conn.fetchval(f"SELECT $1::int + {n}", i) == i + n
                async with conn.transaction():
                    await conn.execute("INSERT INTO asyncpg_rows (conn, v) VALUES ($1, $2)", n, i)
                    count = await conn.fetchval(
                        "SELECT count(*) FROM asyncpg_rows WHERE conn = $1", n
                    )
                    assert count == i // 20 + 1, (n, i, count)
        inserted = (iterations + 19) // 20
        await conn.executemany(
            "INSERT INTO asyncpg_rows (conn, v) VALUES ($1, $2)",
            [(n, 100_000 + k) for k in range(50)],
        )
        count = await conn.fetchval("SELECT count(*) FROM asyncpg_rows WHERE conn = $1", n)
        assert count == inserted + 50, (n, count)
        # A server error reaches the client unchanged; the connection goes on.
        try:
            await conn.fetchval("SELECT 1 / $1::int", 0)
            raise AssertionError("division by zero did not fail")
        except asyncpg.DivisionByZeroError:
            pass
        # A failed transaction is rolled back and its statements stay usable.
        try:
            async with conn.transaction():
                await conn.execute("INSERT INTO asyncpg_rows (conn, v) VALUES ($1, $2)", n, -1)
                await conn.fetchval("SELECT 1 / $1::int", 0)
        except asyncpg.DivisionByZeroError:
            pass
        assert await conn.fetchval("SELECT count(*) FROM asyncpg_rows WHERE v = -1") == 0
        assert await conn.fetchval("SELECT $1::int + 1", 41) == 42
    finally:
        await conn.close()


async def pool_phase(kw, tasks, rounds):
    """asyncpg's own pool: connections are reset (RESET ALL, UNLISTEN *, CLOSE ALL,
    pg_advisory_unlock_all()) each time they go back to it."""
    pool = await asyncpg.create_pool(**kw, min_size=4, max_size=12)
    try:

        async def task(t):
            for r in range(rounds):
                async with pool.acquire() as c:
                    assert await c.fetchval("SELECT $1::int + 1", r) == r + 1
                    assert await c.fetchval("SELECT $1::text || 'x'", str(t)) == f"{t}x"
                assert await pool.fetchval("SELECT $1::int * 3", t) == 3 * t

        await asyncio.gather(*(task(t) for t in range(tasks)))
    finally:
        await pool.close()


async def main(argv):
    kw = kwargs(argv)
    connections = int(argv[5]) if len(argv) > 5 else 20
    iterations = int(argv[6]) if len(argv) > 6 else 200
    await setup(kw)
    t0 = time.monotonic()
    await asyncio.gather(*(worker(kw, n, iterations) for n in range(connections)))
    t1 = time.monotonic()
    await pool_phase(kw, 30, 20)
    t2 = time.monotonic()
    print(
        f"asyncpg OK {asyncpg.__version__}: {connections} connections x {iterations} "
        f"iterations in {t1 - t0:.1f} s; pool phase 30 tasks x 20 rounds in {t2 - t1:.1f} s"
    )


if __name__ == "__main__":
    asyncio.run(main(sys.argv))
