#!/usr/bin/env python3
"""asyncpg's server_settings (sent as startup parameters) through pgtier in transaction mode
(run by tests/tests/startup_params.rs): the connection that set them sees them on every
transaction, a plain connection sharing the one server connection never does, and RESET ALL
brings them back as on Postgres.

Usage: asyncpg_server_settings.py HOST PORT USER DB
Prints "asyncpg server_settings OK" and exits 0 when every check passed.
"""

import asyncio
import sys

import asyncpg

SHOW = (
    "SELECT current_setting('statement_timeout'), current_setting('search_path'),"
    " current_setting('DateStyle'), pg_backend_pid()"
)
WANT = ("4321ms", "myschema", "SQL, DMY")


async def main(argv):
    kw = dict(host=argv[1], port=int(argv[2]), user=argv[3], database=argv[4], timeout=30)
    a = await asyncpg.connect(
        **kw,
        server_settings={
            "statement_timeout": "4321",
            "search_path": "myschema",
            "DateStyle": "SQL, DMY",
        },
    )
    b = await asyncpg.connect(**kw)
    try:
        defaults = tuple(await b.fetchrow(SHOW))
        assert defaults[:3] != WANT, defaults
        for i in range(20):
            ra = tuple(await a.fetchrow(SHOW))
            rb = tuple(await b.fetchrow(SHOW))
            assert ra[:3] == WANT, (i, ra)
            assert rb == defaults, (i, rb, defaults)
            assert ra[3] == rb[3], "one server connection serves both"
            if i % 5 == 0:
                await a.execute("RESET ALL")
    finally:
        await a.close()
        await b.close()
    print("asyncpg server_settings OK")


asyncio.run(main(sys.argv))
