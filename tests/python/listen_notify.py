#!/usr/bin/env python3
"""psycopg 3 and asyncpg listeners through pgtier in transaction mode (run by
tests/tests/listen_notify.rs): pgtier answers their LISTEN itself and delivers notifications
from its shared listening connection.

Usage: listen_notify.py HOST PORT USER DB COUNT
A psycopg connection (conn.notifies()) and an asyncpg connection (add_listener) LISTEN on one
channel; COUNT notifications are sent through pgtier by a third connection (each with the pid
of the server that ran it). Each listener must get all of them, once each, in order, with the
right channel, payload and pid. Prints "listen_notify OK ..." and exits 0.
"""

import asyncio
import sys

import asyncpg
import psycopg

CHANNEL = "py_jobs"


async def main(argv):
    host, port, user, db, count = argv[1], int(argv[2]), argv[3], argv[4], int(argv[5])
    dsn = f"host={host} port={port} user={user} dbname={db} connect_timeout=30"

    # psycopg: a plain execute without parameters is a simple query.
    pconn = psycopg.connect(dsn, autocommit=True)
    pconn.execute(f"LISTEN {CHANNEL}")

    got_async = []
    done = asyncio.Event()

    def on_note(_conn, pid, channel, payload):
        got_async.append((channel, payload, pid))
        if len(got_async) >= count:
            done.set()

    aconn = await asyncpg.connect(host=host, port=port, user=user, database=db, timeout=30)
    await aconn.add_listener(CHANNEL, on_note)

    sender = psycopg.connect(dsn, autocommit=True)
    sent = []
    for i in range(count):
        payload = f"job-{i}"
        row = sender.execute(
            "SELECT pg_backend_pid(), pg_notify(%s, %s)", (CHANNEL, payload)
        ).fetchone()
        sent.append((CHANNEL, payload, row[0]))

    got_sync = [
        (n.channel, n.payload, n.pid)
        for n in pconn.notifies(timeout=20, stop_after=count)
    ]
    await asyncio.wait_for(done.wait(), 20)
    # Nothing more (no duplicates): a marker sent now comes next.
    sender.execute("NOTIFY py_jobs, 'marker'")
    marker = [n.payload for n in pconn.notifies(timeout=20, stop_after=1)]
    assert marker == ["marker"], marker
    await asyncio.sleep(0)

    assert got_sync == sent, f"psycopg got {got_sync[:5]}... want {sent[:5]}..."
    assert got_async[:count] == sent, f"asyncpg got {got_async[:5]}... want {sent[:5]}..."

    # UNLISTEN through asyncpg; psycopg's UNLISTEN *.
    await aconn.remove_listener(CHANNEL, on_note)
    pconn.execute("UNLISTEN *")
    await aconn.close()
    pconn.close()
    sender.close()
    print(f"listen_notify OK: psycopg and asyncpg each got {count} notifications once, in order")


if __name__ == "__main__":
    asyncio.run(main(sys.argv))
