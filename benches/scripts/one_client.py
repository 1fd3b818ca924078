#!/usr/bin/env python3
"""One-client latency of several running targets, interleaved: pgbench -S -c 1 against each
target in turn, ROUNDS times, then medians of latency, pgbench's own CPU per transaction, and
the proxy's user and kernel CPU per transaction (from /proc of the process listening on the
port; none for a Postgres target). For A/B runs of two configs of one build, or of proxies
against direct Postgres, that `compare` does not set up (e.g. replica_round_robin on and off).

  one_client.py MODE ROUNDS NAME=PORT[/DBNAME] ...   (user app, password app; 4 s per run)
"""
import os, re, statistics, subprocess, sys

def pid_of(port):
    out = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True).stdout
    m = re.search(r"pid=(\d+)", out)
    return int(m.group(1)) if m else None

def cpu(pid):
    if pid is None:
        return (0.0, 0.0)
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    tck = os.sysconf("SC_CLK_TCK")
    return (int(f[11]) / tck, int(f[12]) / tck)

def main():
    mode, rounds = sys.argv[1], int(sys.argv[2])
    targets = {}
    for arg in sys.argv[3:]:
        name, where = arg.split("=")
        port, _, db = where.partition("/")
        targets[name] = (int(port), db or "app")
    res = {t: [] for t in targets}
    env = dict(os.environ, PGPASSWORD="app")
    for _ in range(rounds):
        for t, (port, db) in targets.items():
            pid = pid_of(port)
            if pid is not None and "postgres" in open(f"/proc/{pid}/comm").read():
                pid = None
            c0 = cpu(pid)
            cmd = (f"/usr/bin/time -f 'TIME %U %S' pgbench -n -S -M {mode} -c 1 -j 1 -T 4 "
                   f"-h 127.0.0.1 -p {port} -U app {db}")
            p = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=env)
            c1 = cpu(pid)
            out = p.stdout + p.stderr
            n = int(re.search(r"processed: (\d+)", out).group(1))
            lat = float(re.search(r"latency average = ([\d.]+)", out).group(1))
            u, s = map(float, re.search(r"TIME ([\d.]+) ([\d.]+)", out).groups())
            res[t].append((lat, (u + s) / n * 1e6, (c1[0] - c0[0]) / n * 1e6, (c1[1] - c0[1]) / n * 1e6))
    for t in targets:
        med = [statistics.median(x[i] for x in res[t]) for i in range(4)]
        print(f"{t:16s} latency {med[0]:.3f} ms  pgbench cpu/tx {med[1]:5.1f} us  "
              f"proxy user/tx {med[2]:5.1f} us  kernel/tx {med[3]:5.1f} us")

main()
