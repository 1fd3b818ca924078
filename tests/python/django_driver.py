#!/usr/bin/env python3
"""The Django ORM (psycopg 3 backend, server-side binding, prepare_threshold 2) through pgtier:
migrations, ORM queries, atomic blocks with savepoints. Settings: tests/python/django_app/.

Usage: django_driver.py HOST PORT USER PASSWORD DB [WORKERS] [OPS] [CLIENTS]
"""

import os
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "django_app"))
a_ = sys.argv
os.environ.update(PGTIER_HOST=a_[1], PGTIER_PORT=a_[2], PGTIER_USER=a_[3], PGTIER_PASSWORD=a_[4],
                  PGTIER_DB=a_[5], DJANGO_SETTINGS_MODULE="settings")

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import IntegrityError, OperationalError, connection, transaction  # noqa: E402
from pymatrix_notes.models import Author, Note  # noqa: E402

from pymatrix import deadline_poll, main, ok, run_threads  # noqa: E402


def scalar(sql, params=None):
    with connection.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchone()[0]


def run(a):
    import psycopg

    with connection.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS pymatrix_notes_note, pymatrix_notes_author, django_migrations")
    call_command("migrate", verbosity=0)
    assert scalar("SELECT count(*) FROM django_migrations WHERE app = 'pymatrix_notes'") == 1
    ok("connect-password", "and migrate")
    assert scalar("SELECT 1") == 1
    assert scalar("SELECT %s::int + %s::int", (40, 2)) == 42
    me = Author.objects.create(name="me")
    assert Author.objects.filter(name="me").count() == 1
    ok("simple-and-parameterized")

    # Django runs in autocommit outside atomic(): ORM reads may go to a replica.
    assert scalar("INSERT INTO pymatrix_notes_author (name) VALUES ('w') RETURNING pg_is_in_recovery()") is False
    deadline_poll("an autocommit read on a replica", lambda: scalar("SELECT pg_is_in_recovery()"))
    for i in range(50):
        n = Note.objects.create(author=me, body=f"b{i}")
        assert Note.objects.get(pk=n.pk).body == f"b{i}", "read-your-writes"
    ok("routing", "write on primary, autocommit read on replica, 50 ORM reads of own writes")

    try:
        with transaction.atomic():
            Note.objects.create(author=me, body="rolled back")
            raise RuntimeError("roll back")
    except RuntimeError:
        pass
    assert not Note.objects.filter(body="rolled back").exists()
    with transaction.atomic():
        Note.objects.create(author=me, body="kept")
        try:
            with transaction.atomic():  # a savepoint
                Author.objects.create(name="me")
            raise AssertionError("duplicate name accepted")
        except IntegrityError as e:
            assert e.__cause__.sqlstate == "23505"
        Note.objects.create(author=me, body="kept too")
    assert Note.objects.filter(body__startswith="kept").count() == 2
    try:
        with transaction.atomic():
            scalar("SELECT 1 / 0")
    except Exception as e:  # noqa: BLE001
        assert getattr(e.__cause__, "sqlstate", None) == "22012", repr(e)
    assert scalar("SELECT 7") == 7
    ok("transactions", "atomic rollback, 23505 in a savepoint then commit, 22012 then recovery")

    connection.ensure_connection()
    raw = connection.connection
    with raw.cursor() as cur:
        with cur.copy("COPY pymatrix_notes_note (author_id, body, worker) FROM STDIN") as cp:
            for k in range(500):
                cp.write_row((me.pk, f"copied {k}", -2))
    assert Note.objects.filter(worker=-2).count() == 500
    ok("copy", "500 rows in through the backend's psycopg connection")

    done = threading.Event()

    def canceller():
        while not done.wait(0.2):
            raw.cancel_safe()

    t = threading.Thread(target=canceller)
    t.start()
    t0 = time.monotonic()
    try:
        scalar("SELECT pg_sleep(20)")
        raise AssertionError("pg_sleep was not cancelled")
    except OperationalError as e:
        assert e.__cause__.sqlstate == "57014", repr(e)
    finally:
        done.set()
        t.join()
    assert time.monotonic() - t0 < 10
    assert scalar("SELECT 7") == 7
    ok("cancel", "57014")

    # Django connections are per thread: CLIENTS connections on pgtier's pool of 3.
    barrier = threading.Barrier(a.prepared_clients, timeout=60)

    def client(n):
        try:
            author = Author.objects.create(name=f"client{n}")
            barrier.wait()
            for i in range(20):
                with transaction.atomic():
                    Note.objects.create(author=author, body=f"{i}", worker=1000 + n)
                    assert Note.objects.filter(author=author).count() == i + 1
            named = len(connection.connection._prepared._names)
            assert named >= 2, f"psycopg prepared {named} statements"
        finally:
            connection.close()

    run_threads(a.prepared_clients, client, "clients")
    ok("small-pool", f"{a.prepared_clients} connections x 20 atomic blocks, prepared statements")

    def worker(n):
        try:
            author = Author.objects.create(name=f"worker{n}")
            for i in range(a.ops):
                if i % 4 == 0:
                    with transaction.atomic():
                        note = Note.objects.create(author=author, body=str(i), worker=n)
                    assert Note.objects.get(pk=note.pk).body == str(i)
                else:
                    assert Author.objects.get(pk=author.pk).name == f"worker{n}"
        finally:
            connection.close()

    run_threads(a.workers, worker, "workers")
    got = Note.objects.filter(worker__gte=0, worker__lt=1000).count()
    assert got == a.workers * ((a.ops + 3) // 4), got
    ok("concurrency", f"{a.workers} workers x {a.ops} operations, 0 errors")
    return f"django OK {django.get_version()} psycopg {psycopg.__version__}"


if __name__ == "__main__":
    main(run)
