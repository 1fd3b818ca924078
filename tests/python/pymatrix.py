"""Shared plumbing of the Python driver/ORM matrix scripts (run by tests/tests/drivers_python.rs).

Every script takes: HOST PORT USER PASSWORD DB [WORKERS] [OPS] [PREPARED_CLIENTS]
and prints one "check NAME ok" line per check passed, then "DRIVER OK ..." on success. Any
failed check raises, prints the traceback and exits non-zero.
"""

import sys
import threading
import time
import traceback


class Args:
    def __init__(self, argv):
        self.host = argv[1]
        self.port = int(argv[2])
        self.user = argv[3]
        self.password = argv[4]
        self.db = argv[5]
        self.workers = int(argv[6]) if len(argv) > 6 else 20
        self.ops = int(argv[7]) if len(argv) > 7 else 200
        self.prepared_clients = int(argv[8]) if len(argv) > 8 else 30

    def url(self, scheme):
        return f"{scheme}://{self.user}:{self.password}@{self.host}:{self.port}/{self.db}"


def ok(name, detail=""):
    print(f"check {name} ok{(': ' + detail) if detail else ''}", flush=True)


def deadline_poll(what, fn, seconds=15.0, interval=0.02):
    """Calls fn() until it returns a truthy value; raises after `seconds`."""
    end = time.monotonic() + seconds
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() > end:
            raise AssertionError(f"{what}: not within {seconds} s")
        time.sleep(interval)


def run_threads(n, target, what):
    """Runs target(i) in n threads; raises with the first failures if any thread failed."""
    failures = []

    def run(i):
        try:
            target(i)
        except BaseException as e:  # noqa: BLE001 - report every failure
            failures.append(f"{what} {i}: {e!r}\n{traceback.format_exc()}")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=170)
        if t.is_alive():
            failures.append(f"{what}: a thread still runs after 170 s")
            break
    if failures:
        for f in failures[:3]:
            print(f, file=sys.stderr)
        raise AssertionError(f"{len(failures)} of {n} {what} failed")


def main(fn):
    t0 = time.monotonic()
    try:
        summary = fn(Args(sys.argv))
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
        sys.exit(1)
    print(f"{summary} in {time.monotonic() - t0:.1f} s", flush=True)
