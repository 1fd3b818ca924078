#!/usr/bin/env python3
"""psycopg 3 with prepared statements through pgtier in transaction mode (run by
tests/tests/drivers.rs).

psycopg names its prepared statements _pg3_0, _pg3_1, ... per connection and prepares them with
libpq (a Parse sent alone with Sync), so connections sharing server connections clash unless the
pooler renames them.

Usage: psycopg_driver.py HOST PORT USER DB [CONNECTIONS] [ITERATIONS]
Prints "psycopg OK ..." and exits 0 when every check passed.
"""

import sys
import threading
import time

import psycopg
from psycopg import errors


def conninfo(argv):
    return dict(host=argv[1], port=int(argv[2]), user=argv[3], dbname=argv[4], connect_timeout=30)


def prepared_names(conn):
    """Names psycopg believes are prepared (private API; None if it moved)."""
    prep = getattr(conn, "_prepared", None)
    names = getattr(prep, "_names", None)
    return None if names is None else len(names)


def worker(ci, n, iterations):
    with psycopg.connect(**ci, autocommit=True) as conn:
        for i in range(iterations):
            v = conn.execute("SELECT %s::int + 1", (i,), prepare=True).fetchone()[0]
            assert v == i + 1, (n, i, v)
            if i % 20 == 0:
                row = conn.execute(
                    "SELECT %s::text || '-' || %s::text, %s::int8 * 2",
                    (f"c{n}", str(i), i),
                    prepare=True,
                ).fetchone()
                assert row == (f"c{n}-{i}", 2 * i), (n, i, row)
                k = i % 7 + 1
                rows = conn.execute(
                    "SELECT g FROM generate_series(1, %s::int) g", (k,), prepare=True
                ).fetchall()
                assert [r[0] for r in rows] == list(range(1, k + 1)), (n, i, rows)
                # A connection-specific statement text.
                assert conn.execute(f"SELECT %s::int + {n} AS c{n}", (i,), prepare=True).fetchone()[
                    0
                ] == i + n
                with conn.transaction():
                    conn.execute(
                        "INSERT INTO psycopg_rows (conn, v) VALUES (%s, %s)", (n, i), prepare=True
                    )
                    count = conn.execute(
                        "SELECT count(*) FROM psycopg_rows WHERE conn = %s", (n,), prepare=True
                    ).fetchone()[0]
                    assert count == i // 20 + 1, (n, i, count)
        named = prepared_names(conn)
        assert named is None or named >= 6, f"psycopg prepared only {named} statements"

        # Pipeline mode: many prepared statements before one Sync.
        with conn.pipeline():
            curs = [conn.execute("SELECT %s::int * 3", (k,), prepare=True) for k in range(30)]
        assert [c.fetchone()[0] for c in curs] == [3 * k for k in range(30)]
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO psycopg_rows (conn, v) VALUES (%s, %s)",
                [(n, 100_000 + k) for k in range(50)],
            )
        count = conn.execute(
            "SELECT count(*) FROM psycopg_rows WHERE conn = %s", (n,), prepare=True
        ).fetchone()[0]
        assert count == (iterations + 19) // 20 + 50, (n, count)

        # After a ROLLBACK (or a DROP) psycopg forgets its statements and sends DEALLOCATE ALL
        # before its next query; it then prepares them again under new names.
        conn.execute("BEGIN")
        conn.execute("SELECT %s::int", (1,), prepare=True)
        conn.execute("ROLLBACK")
        for i in range(10):
            assert conn.execute("SELECT %s::int + 1", (i,), prepare=True).fetchone()[0] == i + 1
        conn.execute("DROP TABLE IF EXISTS psycopg_nothing")
        for i in range(10):
            assert conn.execute("SELECT %s::int * 3", (i,), prepare=True).fetchone()[0] == 3 * i

        # A server error reaches the client unchanged; the connection goes on.
        try:
            conn.execute("SELECT 1 / %s::int", (0,), prepare=True)
            raise AssertionError("division by zero did not fail")
        except errors.DivisionByZero:
            pass
        assert conn.execute("SELECT %s::int + 1", (41,), prepare=True).fetchone()[0] == 42

    # A non-autocommit connection with the default threshold: statements get prepared on
    # their 5th execution, inside transactions.
    with psycopg.connect(**ci) as conn:
        for i in range(20):
            v = conn.execute("SELECT %s::int - 1", (i,)).fetchone()[0]
            assert v == i - 1
            conn.commit()
        named = prepared_names(conn)
        assert named is None or named >= 1, "the threshold did not prepare"


def main(argv):
    ci = conninfo(argv)
    connections = int(argv[5]) if len(argv) > 5 else 8
    iterations = int(argv[6]) if len(argv) > 6 else 200
    with psycopg.connect(**ci, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS psycopg_rows")
        conn.execute("CREATE TABLE psycopg_rows (conn int NOT NULL, v int NOT NULL)")
    errors_seen = []

    def run(n):
        try:
            worker(ci, n, iterations)
        except BaseException as e:  # noqa: BLE001 - report every failure
            import traceback

            errors_seen.append(f"connection {n}: {e!r}\n{traceback.format_exc()}")

    t0 = time.monotonic()
    threads = [threading.Thread(target=run, args=(n,)) for n in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors_seen:
        print(f"{len(errors_seen)} of {connections} connections failed", file=sys.stderr)
        for e in errors_seen[:3]:
            print(e, file=sys.stderr)
        sys.exit(1)
    print(
        f"psycopg OK {psycopg.__version__} (libpq {psycopg.pq.version()}): "
        f"{connections} connections x {iterations} iterations in {time.monotonic() - t0:.1f} s"
    )


if __name__ == "__main__":
    main(sys.argv)
