#!/usr/bin/env python3
"""Drivers read pgtier's causal token right after a write (run by tests/tests/causal_token.rs).

pgtier sends ParameterStatus `pgtier.causal_lsn` before the ReadyForQuery that ends a write
transaction; a driver reads up to ReadyForQuery, so asking for the parameter right after the
call must give this write's token, strictly past the previous one.

- psycopg 3 (its bundled libpq): `conn.info.parameter_status`, and `conn.pgconn.parameter_status`,
  which is libpq's PQparameterStatus; extended protocol (parameters), simple protocol
  (ClientCursor), `conn.transaction()` blocks and `commit()` without autocommit.
- libpq called directly through ctypes (the system's libpq.so.5): PQexec, then
  PQparameterStatus.

Usage: causal_token.py HOST PORT USER DB TABLE [psycopg|libpq]...
Prints "causal_token OK ..." and exits 0 when every check passed (of the drivers named; both
if none is).
"""

import ctypes
import ctypes.util
import sys

import psycopg

NAME = "pgtier.causal_lsn"


def lsn(text):
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


class Tokens:
    """Checks that each write's token is past the write's own position and the last token."""

    def __init__(self):
        self.last = 0
        self.checked = 0

    def check(self, token, position, what):
        assert token is not None, f"{what}: no {NAME} after the write"
        t = lsn(token)
        assert t > lsn(position), f"{what}: token {token} not past the write's position {position}"
        assert t > self.last, f"{what}: token {token} did not advance from {self.last:X}"
        self.last = t
        self.checked += 1


def check_psycopg(ci, table, tokens):
    insert = f"INSERT INTO {table} VALUES (%s) RETURNING pg_current_wal_insert_lsn()::text"
    with psycopg.connect(**ci, autocommit=True) as conn:
        for i in range(5):
            pos = conn.execute(insert, (i,)).fetchone()[0]
            token = conn.info.parameter_status(NAME)
            tokens.check(token, pos, f"psycopg autocommit insert {i}")
            raw = conn.pgconn.parameter_status(NAME.encode())
            assert raw is not None and raw.decode() == token, (raw, token)
        for i in range(3):
            cur = psycopg.ClientCursor(conn)
            pos = cur.execute(insert, (i,)).fetchone()[0]
            tokens.check(conn.info.parameter_status(NAME), pos, f"psycopg simple-protocol insert {i}")
        # Reads leave the token alone.
        before = conn.info.parameter_status(NAME)
        conn.execute("SELECT 1").fetchone()
        assert conn.info.parameter_status(NAME) == before
        with conn.transaction():
            pos = conn.execute(insert, (10,)).fetchone()[0]
            # Inside the block nothing is committed yet: the token has not moved.
            assert conn.info.parameter_status(NAME) == before
        tokens.check(conn.info.parameter_status(NAME), pos, "psycopg conn.transaction()")
    with psycopg.connect(**ci) as conn:
        for i in range(3):
            pos = conn.execute(insert, (20 + i,)).fetchone()[0]
            conn.commit()
            tokens.check(conn.info.parameter_status(NAME), pos, f"psycopg commit() {i}")


def check_libpq(ci, table, tokens):
    path = ctypes.util.find_library("pq") or "libpq.so.5"
    pq = ctypes.CDLL(path)
    pq.PQconnectdb.restype = ctypes.c_void_p
    pq.PQconnectdb.argtypes = [ctypes.c_char_p]
    pq.PQstatus.argtypes = [ctypes.c_void_p]
    pq.PQerrorMessage.restype = ctypes.c_char_p
    pq.PQerrorMessage.argtypes = [ctypes.c_void_p]
    pq.PQexec.restype = ctypes.c_void_p
    pq.PQexec.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    pq.PQresultStatus.argtypes = [ctypes.c_void_p]
    pq.PQgetvalue.restype = ctypes.c_char_p
    pq.PQgetvalue.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    pq.PQparameterStatus.restype = ctypes.c_char_p
    pq.PQparameterStatus.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    pq.PQclear.argtypes = [ctypes.c_void_p]
    pq.PQfinish.argtypes = [ctypes.c_void_p]
    dsn = " ".join(f"{k}={v}" for k, v in ci.items()).encode()
    conn = pq.PQconnectdb(dsn)
    assert pq.PQstatus(conn) == 0, pq.PQerrorMessage(conn)
    try:
        for i in range(5):
            sql = f"INSERT INTO {table} VALUES ({i}) RETURNING pg_current_wal_insert_lsn()::text"
            res = pq.PQexec(conn, sql.encode())
            assert pq.PQresultStatus(res) == 2, pq.PQerrorMessage(conn)  # PGRES_TUPLES_OK
            pos = pq.PQgetvalue(res, 0, 0).decode()
            pq.PQclear(res)
            token = pq.PQparameterStatus(conn, NAME.encode())
            tokens.check(token and token.decode(), pos, f"libpq PQexec insert {i}")
    finally:
        pq.PQfinish(conn)
    return path


def main(argv):
    host, port, user, db, table = argv[1:6]
    drivers = argv[6:] or ["psycopg", "libpq"]
    ci = dict(host=host, port=int(port), user=user, dbname=db, connect_timeout=30)
    done = []
    for driver in drivers:
        tokens = Tokens()
        if driver == "psycopg":
            check_psycopg(ci, table, tokens)
            name = f"psycopg {psycopg.__version__} (libpq {psycopg.pq.version()})"
        else:
            name = f"libpq via ctypes ({check_libpq(ci, table, tokens)})"
        done.append(f"{name}: {tokens.checked} writes")
    print("causal_token OK: " + "; ".join(done))


if __name__ == "__main__":
    main(sys.argv)
