#!/usr/bin/env python3
"""Concurrent create-then-read load against the example app (stdlib only).

Usage: load.py BASE_URL WORKERS PAIRS_PER_WORKER [READ_BASE_URL]
Each worker POSTs a note and at once GETs it back (a new HTTP connection each time, as
requests behind a load balancer; with READ_BASE_URL the GET goes to a second app instance). Prints "pairs=N stale=N replica_reads=N errors=N".
"""

import http.client
import json
import sys
import threading
from urllib.parse import urlparse


def request(host, port, method, path, body=None):
    c = http.client.HTTPConnection(host, port, timeout=30)
    try:
        data = None if body is None else json.dumps(body)
        c.request(method, path, body=data, headers={"Content-Type": "application/json"})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def main():
    base, workers, pairs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    u = urlparse(base)
    r = urlparse(sys.argv[4]) if len(sys.argv) > 4 else u
    lock = threading.Lock()
    counts = {"pairs": 0, "stale": 0, "replica_reads": 0, "errors": 0}
    errors = []

    def worker(w):
        for i in range(pairs):
            try:
                s, b = request(u.hostname, u.port, "POST", "/notes", {"author": f"w{w}", "body": f"n{i}"})
                assert s == 201, (s, b)
                nid = json.loads(b)["id"]
                s, b = request(r.hostname, r.port, "GET", f"/notes/{nid}")
                with lock:
                    counts["pairs"] += 1
                    if s == 404:
                        counts["stale"] += 1
                    elif s == 200:
                        counts["replica_reads"] += bool(json.loads(b)["served_by_replica"])
                    else:
                        raise AssertionError((s, b))
            except Exception as e:  # noqa: BLE001
                with lock:
                    counts["errors"] += 1
                    errors.append(repr(e))

    ts = [threading.Thread(target=worker, args=(w,)) for w in range(workers)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=170)
    for e in errors[:3]:
        print(e, file=sys.stderr)
    print(" ".join(f"{k}={v}" for k, v in counts.items()), flush=True)


if __name__ == "__main__":
    main()
