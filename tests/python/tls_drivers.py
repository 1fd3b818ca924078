#!/usr/bin/env python3
"""psycopg 3 and asyncpg over TLS to pgtier (run by tests/tests/tls_client.rs).

pgtier runs with client_tls_sslmode = "require", so a session that works is encrypted; each
check also asserts what the driver reports about its own connection.

- psycopg 3 (its bundled libpq): sslmode=verify-full with sslrootcert; `conn.pgconn.ssl_in_use`.
- asyncpg: an ssl.SSLContext that verifies the CA and the host name, through an SSLRequest;
  then a DSN with sslmode=verify-full and direct_tls=True (a ClientHello first, ALPN
  "postgresql"); asyncpg's transport must carry an SSL object.
- Both: a read-your-writes round trip (INSERT, then SELECT it back).

Usage: tls_drivers.py HOST PORT USER PASSWORD DB CAFILE
Prints "tls_drivers OK" and exits 0 when every check passed.
"""

import asyncio
import ssl
import sys

import asyncpg
import psycopg

HOST, PORT, USER, PASSWORD, DB, CAFILE = sys.argv[1:7]


def check_psycopg():
    dsn = (
        f"host={HOST} port={PORT} user={USER} password={PASSWORD} dbname={DB} "
        f"sslmode=verify-full sslrootcert={CAFILE} connect_timeout=10"
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.pgconn.ssl_in_use, "psycopg: not encrypted"
        conn.execute("CREATE TABLE IF NOT EXISTS tls_py (id int, v text)")
        conn.execute("INSERT INTO tls_py VALUES (%s, %s)", (1, "psycopg"))
        got = conn.execute("SELECT v FROM tls_py WHERE id = 1").fetchone()[0]
        assert got == "psycopg", got
        print("psycopg over TLS (ssl_in_use)")


async def check_asyncpg(direct):
    if direct:
        # asyncpg's own sslmode handling (it offers ALPN "postgresql", which direct TLS needs).
        conn = await asyncpg.connect(
            f"postgresql://{USER}:{PASSWORD}@{HOST}:{PORT}/{DB}"
            f"?sslmode=verify-full&sslrootcert={CAFILE}",
            direct_tls=True,
            timeout=10,
        )
    else:
        conn = await asyncpg.connect(
            host=HOST,
            port=int(PORT),
            user=USER,
            password=PASSWORD,
            database=DB,
            ssl=ssl.create_default_context(cafile=CAFILE),
            timeout=10,
        )
    try:
        sslobj = conn._transport.get_extra_info("ssl_object")
        assert sslobj is not None, "asyncpg: not encrypted"
        await conn.execute("INSERT INTO tls_py VALUES ($1, $2)", 2, "asyncpg")
        got = await conn.fetchval("SELECT count(*) FROM tls_py WHERE id = 2")
        assert got >= 1, got
        print(f"asyncpg direct_tls={direct} over {sslobj.version()} alpn={sslobj.selected_alpn_protocol()}")
    finally:
        await conn.close()


check_psycopg()
asyncio.run(check_asyncpg(False))
asyncio.run(check_asyncpg(True))
print("tls_drivers OK")
