#!/usr/bin/env python3
"""psycopg2 (libpq, from the psycopg2-binary wheel) through pgtier in transaction mode.

psycopg2 interpolates parameters on the client and sends everything with the simple query
protocol; it has no protocol-level prepared statements, so its "named prepared statements" are
SQL PREPARE / EXECUTE, which pgtier pins to a server (session state, see the README).

Usage: psycopg2_driver.py HOST PORT USER PASSWORD DB [WORKERS] [OPS] [PREPARED_CLIENTS]
"""

import io
from contextlib import closing
import threading
import time

import psycopg2
import psycopg2.errors
import psycopg2.extensions

from pymatrix import deadline_poll, main, ok, run_threads

T = "py2_rows"


def connect(a, autocommit=False):
    """A connection; use it with closing(): psycopg2 2.9's `with conn` opens a transaction
    block even in autocommit (every statement would then go to the primary) and does not
    close the connection."""
    c = psycopg2.connect(
        host=a.host, port=a.port, user=a.user, password=a.password, dbname=a.db, connect_timeout=30
    )
    c.autocommit = autocommit
    return c


def one(conn, sql, params=None):
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchone()


def run(a):
    # Password auth (SCRAM between the client and pgtier) and the simple protocol.
    with closing(connect(a, autocommit=True)) as c:
        with c.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {T}")
            cur.execute(
                f"CREATE TABLE {T} (id serial PRIMARY KEY, w int NOT NULL, v int NOT NULL, note text)"
            )
        ok("connect-password")
        assert one(c, "SELECT 1") == (1,)
        assert one(c, "SELECT %s::int + %s, %s::text", (40, 2, "x'y")) == (42, "x'y")
        ok("simple-and-parameterized")

        # Routing: a write on the primary, autocommit reads on a replica, read-your-writes.
        row = one(c, f"INSERT INTO {T} (w, v) VALUES (-1, 0) RETURNING id, pg_is_in_recovery()")
        assert row[1] is False, "a write ran on a replica"
        deadline_poll("an autocommit read on a replica", lambda: one(c, "SELECT pg_is_in_recovery()")[0])
        for i in range(50):
            rid = one(c, f"INSERT INTO {T} (w, v) VALUES (-1, %s) RETURNING id", (i,))[0]
            assert one(c, f"SELECT v FROM {T} WHERE id = %s", (rid,)) == (i,), "read-your-writes"
        ok("routing", "write on primary, read on replica, 50 reads of own writes")

        # COPY both ways.
        data = "".join(f"-2,{k},copied {k}\n" for k in range(500))
        with c.cursor() as cur:
            cur.copy_expert(f"COPY {T} (w, v, note) FROM STDIN WITH (FORMAT csv)", io.StringIO(data))
            out = io.StringIO()
            cur.copy_expert(
                f"COPY (SELECT w, v, note FROM {T} WHERE w = -2 ORDER BY v) TO STDOUT WITH (FORMAT csv)",
                out,
            )
        assert out.getvalue() == data, "COPY round trip"
        ok("copy", "500 rows in and out")

    # Explicit transaction with rollback; an error inside a transaction and recovery.
    with closing(connect(a)) as c:
        with c.cursor() as cur:
            cur.execute(f"INSERT INTO {T} (w, v) VALUES (-3, 1)")
            c.rollback()
            cur.execute(f"SELECT count(*) FROM {T} WHERE w = -3")
            assert cur.fetchone() == (0,), "rolled back row visible"
            c.commit()
            cur.execute(f"INSERT INTO {T} (w, v) VALUES (-3, 2)")
            try:
                cur.execute("SELECT 1 / 0")
                raise AssertionError("division by zero did not fail")
            except psycopg2.errors.DivisionByZero as e:
                assert e.pgcode == "22012"
            try:
                cur.execute("SELECT 1")
                raise AssertionError("aborted transaction ran a statement")
            except psycopg2.errors.InFailedSqlTransaction as e:
                assert e.pgcode == "25P02"
            c.rollback()
            cur.execute(f"SELECT count(*) FROM {T} WHERE w = -3")
            assert cur.fetchone() == (0,)
            c.commit()
        ok("transactions", "rollback, 22012 then 25P02 then recovery")

        # Cancel (libpq PQcancel, plain text) of a running query.
        done = threading.Event()

        def canceller():
            while not done.wait(0.2):
                c.cancel()

        t = threading.Thread(target=canceller)
        t.start()
        t0 = time.monotonic()
        try:
            with c.cursor() as cur:
                cur.execute("SELECT pg_sleep(20)")
            raise AssertionError("pg_sleep was not cancelled")
        except psycopg2.errors.QueryCanceled as e:
            assert e.pgcode == "57014"
        finally:
            done.set()
            t.join()
        c.rollback()
        assert time.monotonic() - t0 < 10, "cancel took too long"
        assert one(c, "SELECT 7") == (7,)
        c.commit()
        ok("cancel", "57014")

    # SQL PREPARE / EXECUTE across many transactions (pins the client to one server).
    for k in range(2):
        with closing(connect(a)) as c:
            with c.cursor() as cur:
                cur.execute("PREPARE py2_add (int) AS SELECT $1 + 1, pg_backend_pid()")
                c.commit()
                pids = set()
                for i in range(50):
                    cur.execute("EXECUTE py2_add (%s)", (i,))
                    v, pid = cur.fetchone()
                    assert v == i + 1
                    pids.add(pid)
                    c.commit()
                assert len(pids) == 1, "a pinned client changed servers"
    ok("sql-prepare", "2 clients x 50 transactions, each pinned to one server")

    # Many clients on a small pool: parameterized statements in many transactions.
    def client(n):
        with closing(connect(a)) as c:
            with c.cursor() as cur:
                for i in range(20):
                    cur.execute("SELECT %s::int * 2, %s::text", (i, f"c{n}"))
                    assert cur.fetchone() == (2 * i, f"c{n}")
                    cur.execute(f"INSERT INTO {T} (w, v) VALUES (%s, %s)", (1000 + n, i))
                    c.commit()
                cur.execute(f"SELECT count(*) FROM {T} WHERE w = %s", (1000 + n,))
                assert cur.fetchone() == (20,)
                c.commit()

    run_threads(a.prepared_clients, client, "clients")
    ok("small-pool", f"{a.prepared_clients} clients x 20 transactions")

    # Concurrency: WORKERS x OPS, every result checked.
    def worker(n):
        with closing(connect(a)) as c:
            with c.cursor() as cur:
                for i in range(a.ops):
                    if i % 4 == 0:
                        cur.execute(f"INSERT INTO {T} (w, v) VALUES (%s, %s) RETURNING id", (n, i))
                        rid = cur.fetchone()[0]
                        cur.execute(f"SELECT v FROM {T} WHERE id = %s", (rid,))
                        assert cur.fetchone() == (i,)
                        c.commit()
                    else:
                        cur.execute("SELECT %s::int + %s", (n, i))
                        assert cur.fetchone() == (n + i,)
                        c.commit()

    run_threads(a.workers, worker, "workers")
    with closing(connect(a, autocommit=True)) as c:
        n = one(c, f"SELECT count(*) FROM {T} WHERE w BETWEEN 0 AND 999")[0]
    assert n == a.workers * ((a.ops + 3) // 4), n
    ok("concurrency", f"{a.workers} workers x {a.ops} operations, 0 errors")
    return (
        f"psycopg2 OK {psycopg2.__version__.split()[0]} "
        f"(libpq {psycopg2.extensions.libpq_version()})"
    )


if __name__ == "__main__":
    main(run)
