#!/usr/bin/env python3
"""SQLAlchemy 2 through pgtier with the seeds' pattern made one engine: pool_size/max_overflow,
pool_pre_ping, pool_recycle, one DATABASE_URL. MODE `sync` uses the psycopg 3 dialect (psycopg
prepares a statement server-side on its 5th execution: named `_pg3_N` statements), `async` the
asyncpg dialect (asyncpg's and SQLAlchemy's statement caches: named statements).

Reads that should go to a replica run either in autocommit
(`execution_options(isolation_level="AUTOCOMMIT")`) or in a read-only transaction
(`execution_options(postgresql_readonly=True)`: BEGIN READ ONLY); both share the one pool. A
plain (read-write) transaction goes to the primary.

Usage: sqlalchemy_driver.py HOST PORT USER PASSWORD DB WORKERS OPS CLIENTS MODE
"""

import asyncio
import sys
import threading
import time

import sqlalchemy
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from pymatrix import Args, deadline_poll, main, ok, run_threads

T = "sa_rows"


def sqlstate(e):
    orig = getattr(e, "orig", e)
    return getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)


def engine_kw(a):
    return dict(pool_size=10, max_overflow=a.prepared_clients, pool_pre_ping=True,
                pool_recycle=300, pool_timeout=60)


def run_sync(a):
    import psycopg

    eng = sqlalchemy.create_engine(a.url("postgresql+psycopg"), **engine_kw(a))
    auto = eng.execution_options(isolation_level="AUTOCOMMIT")
    ro = eng.execution_options(postgresql_readonly=True)
    with eng.begin() as c:
        c.execute(text(f"DROP TABLE IF EXISTS {T}"))
        c.execute(text(f"CREATE TABLE {T} (id serial PRIMARY KEY, w int NOT NULL, v int NOT NULL, note text)"))
    ok("connect-password")
    with eng.connect() as c:
        assert c.execute(text("SELECT 1")).scalar() == 1
        assert c.execute(text("SELECT CAST(:a AS int) + CAST(:b AS int)"), {"a": 40, "b": 2}).scalar() == 42
    ok("simple-and-parameterized")

    with eng.begin() as c:
        row = c.execute(text(f"INSERT INTO {T} (w, v) VALUES (-1, 0) RETURNING id, pg_is_in_recovery()")).one()
        assert row[1] is False, "a write ran on a replica"
    with auto.connect() as c:
        deadline_poll("an autocommit read on a replica",
                      lambda: c.execute(text("SELECT pg_is_in_recovery()")).scalar())
        for i in range(50):
            rid = c.execute(text(f"INSERT INTO {T} (w, v) VALUES (-1, :v) RETURNING id"), {"v": i}).scalar()
            assert c.execute(text(f"SELECT v FROM {T} WHERE id = :id"), {"id": rid}).scalar() == i
    def ro_on_replica():
        with ro.connect() as c:
            return c.execute(text("SELECT pg_is_in_recovery()")).scalar()
    deadline_poll("a read-only transaction on a replica", ro_on_replica)
    ok("routing", "write on primary, autocommit and READ ONLY reads on a replica, 50 reads of own writes")

    with eng.connect() as c:
        c.execute(text(f"INSERT INTO {T} (w, v) VALUES (-3, 1)"))
        c.rollback()
        assert c.execute(text(f"SELECT count(*) FROM {T} WHERE w = -3")).scalar() == 0
        c.commit()
        c.execute(text(f"INSERT INTO {T} (w, v) VALUES (-3, 2)"))
        try:
            c.execute(text("SELECT 1 / 0"))
            raise AssertionError("division by zero did not fail")
        except DBAPIError as e:
            assert sqlstate(e) == "22012", sqlstate(e)
        try:
            c.execute(text("SELECT 1"))
            raise AssertionError("aborted transaction ran a statement")
        except DBAPIError as e:
            assert sqlstate(e) == "25P02", sqlstate(e)
        c.rollback()
        assert c.execute(text(f"SELECT count(*) FROM {T} WHERE w = -3")).scalar() == 0
        c.commit()
    ok("transactions", "rollback, 22012 then 25P02 then recovery")

    # COPY through the driver connection under the pool's connection.
    with eng.connect() as c:
        raw = c.connection.driver_connection
        with raw.cursor() as cur:
            with cur.copy(f"COPY {T} (w, v, note) FROM STDIN") as cp:
                for k in range(500):
                    cp.write_row((-2, k, f"copied {k}"))
            with cur.copy(f"COPY (SELECT v FROM {T} WHERE w = -2 ORDER BY v) TO STDOUT") as cp:
                got = [int(r[0]) for r in cp.rows()]
        c.commit()
        assert got == list(range(500))
    ok("copy", "500 rows in and out")

    with eng.connect() as c:
        raw = c.connection.driver_connection
        done = threading.Event()

        def canceller():
            while not done.wait(0.2):
                raw.cancel_safe()

        t = threading.Thread(target=canceller)
        t.start()
        t0 = time.monotonic()
        try:
            c.execute(text("SELECT pg_sleep(20)"))
            raise AssertionError("pg_sleep was not cancelled")
        except DBAPIError as e:
            assert sqlstate(e) == "57014", sqlstate(e)
        finally:
            done.set()
            t.join()
        c.rollback()
        assert time.monotonic() - t0 < 10
        assert c.execute(text("SELECT 7")).scalar() == 7
    ok("cancel", "57014")

    # CLIENTS pooled connections at once (pgtier's pool is 3), each statement executed often
    # enough for psycopg to prepare it (named _pg3_N statements), across many transactions.
    barrier = threading.Barrier(a.prepared_clients, timeout=60)

    def client(n):
        with eng.connect() as c:
            barrier.wait()
            for i in range(20):
                assert c.execute(text("SELECT CAST(:i AS int) * 2, CAST(:n AS text)"), {"i": i, "n": f"c{n}"}).one() == (2 * i, f"c{n}")
                c.execute(text(f"INSERT INTO {T} (w, v) VALUES (:w, :v)"), {"w": 1000 + n, "v": i})
                c.commit()
            assert c.execute(text(f"SELECT count(*) FROM {T} WHERE w = :w"), {"w": 1000 + n}).scalar() == 20
            prepared = len(c.connection.driver_connection._prepared._names)
            assert prepared >= 2, f"psycopg prepared {prepared} statements"
            c.commit()

    run_threads(a.prepared_clients, client, "clients")
    ok("small-pool", f"{a.prepared_clients} engine connections x 20 transactions, prepared statements")

    def worker(n):
        for i in range(a.ops):
            if i % 4 == 0:
                with eng.begin() as c:
                    rid = c.execute(text(f"INSERT INTO {T} (w, v) VALUES (:w, :v) RETURNING id"), {"w": n, "v": i}).scalar()
                with auto.connect() as c:
                    assert c.execute(text(f"SELECT v FROM {T} WHERE id = :id"), {"id": rid}).scalar() == i
            else:
                with ro.connect() as c:
                    assert c.execute(text("SELECT CAST(:a AS int) + CAST(:b AS int)"), {"a": n, "b": i}).scalar() == n + i

    run_threads(a.workers, worker, "workers")
    with eng.connect() as c:
        n = c.execute(text(f"SELECT count(*) FROM {T} WHERE w BETWEEN 0 AND 999")).scalar()
    assert n == a.workers * ((a.ops + 3) // 4), n
    ok("concurrency", f"{a.workers} workers x {a.ops} operations, 0 errors")
    eng.dispose()
    return f"sqlalchemy-sync OK SQLAlchemy {sqlalchemy.__version__} psycopg {psycopg.__version__}"


async def run_async_main(a):
    import asyncpg
    from sqlalchemy.ext.asyncio import create_async_engine

    eng = create_async_engine(a.url("postgresql+asyncpg"), **engine_kw(a))
    auto = eng.execution_options(isolation_level="AUTOCOMMIT")
    ro = eng.execution_options(postgresql_readonly=True)
    async with eng.begin() as c:
        await c.execute(text(f"DROP TABLE IF EXISTS {T}"))
        await c.execute(text(f"CREATE TABLE {T} (id serial PRIMARY KEY, w int NOT NULL, v int NOT NULL, note text)"))
    ok("connect-password")
    async with eng.connect() as c:
        assert (await c.execute(text("SELECT 1"))).scalar() == 1
        assert (await c.execute(text("SELECT CAST(:a AS int) + CAST(:b AS int)"), {"a": 40, "b": 2})).scalar() == 42
    ok("simple-and-parameterized")

    async with eng.begin() as c:
        row = (await c.execute(text(f"INSERT INTO {T} (w, v) VALUES (-1, 0) RETURNING id, pg_is_in_recovery()"))).one()
        assert row[1] is False
    async def poll(e, what):
        end = time.monotonic() + 15
        while True:
            async with e.connect() as c:
                if (await c.execute(text("SELECT pg_is_in_recovery()"))).scalar():
                    return
            assert time.monotonic() < end, f"{what}: not within 15 s"
            await asyncio.sleep(0.02)
    await poll(auto, "an autocommit read on a replica")
    await poll(ro, "a read-only transaction on a replica")
    async with auto.connect() as c:
        for i in range(50):
            rid = (await c.execute(text(f"INSERT INTO {T} (w, v) VALUES (-1, :v) RETURNING id"), {"v": i})).scalar()
            assert (await c.execute(text(f"SELECT v FROM {T} WHERE id = :id"), {"id": rid})).scalar() == i
    ok("routing", "write on primary, autocommit and READ ONLY reads on a replica, 50 reads of own writes")

    async with eng.connect() as c:
        await c.execute(text(f"INSERT INTO {T} (w, v) VALUES (-3, 1)"))
        await c.rollback()
        assert (await c.execute(text(f"SELECT count(*) FROM {T} WHERE w = -3"))).scalar() == 0
        await c.commit()
        await c.execute(text(f"INSERT INTO {T} (w, v) VALUES (-3, 2)"))
        try:
            await c.execute(text("SELECT 1 / 0"))
            raise AssertionError("division by zero did not fail")
        except DBAPIError as e:
            assert sqlstate(e) == "22012", sqlstate(e)
        try:
            await c.execute(text("SELECT 1"))
            raise AssertionError("aborted transaction ran a statement")
        except DBAPIError as e:
            assert sqlstate(e) == "25P02", sqlstate(e)
        await c.rollback()
        assert (await c.execute(text(f"SELECT count(*) FROM {T} WHERE w = -3"))).scalar() == 0
        await c.commit()
    ok("transactions", "rollback, 22012 then 25P02 then recovery")

    async with eng.connect() as c:
        raw = (await c.get_raw_connection()).driver_connection
        await raw.copy_records_to_table(T, records=[(-2, k, f"copied {k}") for k in range(500)], columns=["w", "v", "note"])
        rows = await raw.fetch(f"SELECT v FROM {T} WHERE w = -2 ORDER BY v")
        assert [r[0] for r in rows] == list(range(500))
        # asyncpg cancels a query that overruns its timeout (CancelRequest) and goes on.
        t0 = time.monotonic()
        try:
            await raw.fetchval("SELECT pg_sleep(20)", timeout=0.5)
            raise AssertionError("pg_sleep was not cancelled")
        except asyncio.TimeoutError:
            pass
        assert time.monotonic() - t0 < 10
        assert await raw.fetchval("SELECT 7") == 7
        await c.commit()
    ok("copy", "500 rows with copy_records_to_table")
    ok("cancel", "asyncpg timeout -> CancelRequest, connection reused")

    async def client(n, ready):
        async with eng.connect() as c:
            ready.append(n)
            while len(ready) < a.prepared_clients:
                await asyncio.sleep(0.01)
            for i in range(20):
                assert (await c.execute(text("SELECT CAST(:i AS int) * 2, CAST(:n AS text)"), {"i": i, "n": f"c{n}"})).one() == (2 * i, f"c{n}")
                await c.execute(text(f"INSERT INTO {T} (w, v) VALUES (:w, :v)"), {"w": 1000 + n, "v": i})
                await c.commit()
            assert (await c.execute(text(f"SELECT count(*) FROM {T} WHERE w = :w"), {"w": 1000 + n})).scalar() == 20
            await c.commit()

    ready = []
    await asyncio.wait_for(asyncio.gather(*(client(n, ready) for n in range(a.prepared_clients))), 120)
    ok("small-pool", f"{a.prepared_clients} engine connections x 20 transactions, asyncpg named statements")

    async def worker(n):
        for i in range(a.ops):
            if i % 4 == 0:
                async with eng.begin() as c:
                    rid = (await c.execute(text(f"INSERT INTO {T} (w, v) VALUES (:w, :v) RETURNING id"), {"w": n, "v": i})).scalar()
                async with auto.connect() as c:
                    assert (await c.execute(text(f"SELECT v FROM {T} WHERE id = :id"), {"id": rid})).scalar() == i
            else:
                async with ro.connect() as c:
                    assert (await c.execute(text("SELECT CAST(:a AS int) + CAST(:b AS int)"), {"a": n, "b": i})).scalar() == n + i

    await asyncio.wait_for(asyncio.gather(*(worker(n) for n in range(a.workers))), 150)
    async with eng.connect() as c:
        n = (await c.execute(text(f"SELECT count(*) FROM {T} WHERE w BETWEEN 0 AND 999"))).scalar()
    assert n == a.workers * ((a.ops + 3) // 4), n
    ok("concurrency", f"{a.workers} workers x {a.ops} operations, 0 errors")
    await eng.dispose()
    return f"sqlalchemy-async OK SQLAlchemy {sqlalchemy.__version__} asyncpg {asyncpg.__version__}"


def run(a):
    mode = sys.argv[9] if len(sys.argv) > 9 else "sync"
    if mode == "sync":
        return run_sync(a)
    return asyncio.run(run_async_main(a))


if __name__ == "__main__":
    main(run)
