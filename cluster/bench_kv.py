#!/usr/bin/env python3
"""cluster/bench kv: replicated key-value writes of 3 real nodes on loopback, fsync on.

In one run, on one disk:
  1. the fsync floor: SQLite WAL, synchronous=FULL, one row per commit (Python's sqlite3);
  2. ROUNDS rounds of SECONDS each, every round on a fresh 3-node cluster of each system in
     turn (nothing of the other system running meanwhile; Skein first in odd rounds, dqlite
     first in even ones):
     - Skein: h2load (HTTP/1.1, one PUT in flight per connection) with 64 connections spread
       over the three nodes, cycling through 2,000 keys per node: acknowledged writes/s, p50/p99 over
       every request (h2load's per-request log), fsyncs (group commits) per write;
     - dqlite (dqlite-demo, Debian's go-dqlite), 3 nodes, the same load on its `PUT /key`.
     The three nodes of each share the machine: each gets its share of the cores (a Skein
     node's --event-loops, a dqlite node's GOMAXPROCS).
     The machine's speed drifts by 10-20% within a minute on shared hosts; alternating short
     rounds cancels most of it; the spread of the per-round ratios and a 95% interval of the
     ratio are printed.
  3. failover: a writer per partition through a surviving node while the node leading the
     most partitions is SIGKILLed; the time from the kill until each of its partitions takes
     a write again (max over its partitions), repeated.

Usage: bench_kv.py SKEIN_BIN [SECONDS] [KILLS] [ROUNDS]
"""
import http.client
import json
import math
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_nodes import Nodes, core_share  # noqa: E402

BIN = sys.argv[1]
SECONDS = int(sys.argv[2]) if len(sys.argv) > 2 else 10
KILLS = int(sys.argv[3]) if len(sys.argv) > 3 else 5
ROUNDS = int(sys.argv[4]) if len(sys.argv) > 4 else 4
CONNECTIONS = 64
PARTITIONS = 16
VALUE = b"v" * 100


def get_json(port, path, timeout=1):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return json.load(r)
    except Exception:
        return None


def partition_of(key):
    tag = key
    if "{" in key:
        rest = key[key.index("{") + 1:]
        if "}" in rest and rest.index("}") > 0:
            tag = rest[:rest.index("}")]
    h = 0xcbf29ce484222325
    for b in tag.encode():
        h ^= b
        h = (h * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h % PARTITIONS


def fsync_floor(directory, seconds=3):
    db = sqlite3.connect(os.path.join(directory, "floor.sqlite"), isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")
    n = 0
    end = time.time() + seconds
    while time.time() < end:
        db.execute("BEGIN")
        db.execute("INSERT INTO t (v) VALUES (?)", (VALUE,))
        db.execute("COMMIT")
        n += 1
    return n / seconds


class Load:
    """What one or more load runs measured: per-request latencies (ms) of the acknowledged
    writes, their count, the failures, the seconds of load, and the command line."""

    def __init__(self, times, ok, failed, seconds, command):
        self.times, self.ok, self.failed, self.seconds, self.command = sorted(times), ok, failed, seconds, command

    @property
    def rate(self):
        return self.ok / self.seconds

    def pct(self, q):
        return self.times[min(len(self.times) - 1, int(len(self.times) * q))] if self.times else float("nan")

    @staticmethod
    def merged(loads):
        return Load([t for l in loads for t in l.times], sum(l.ok for l in loads), sum(l.failed for l in loads),
                    sum(l.seconds for l in loads), loads[0].command)


def h2load(urls_per_client, workdir, label):
    """Runs one h2load per target at once, for SECONDS; returns a Load."""
    value = os.path.join(workdir, "value")
    with open(value, "wb") as f:
        f.write(VALUE)
    procs, logs = [], []
    per = [CONNECTIONS // len(urls_per_client)] * len(urls_per_client)
    for i in range(CONNECTIONS % len(urls_per_client)):
        per[i] += 1
    command = None
    for i, urls in enumerate(urls_per_client):
        log = os.path.join(workdir, f"{label}-{i}.log")
        urifile = os.path.join(workdir, f"{label}-{i}.uris")
        with open(urifile, "w") as f:
            f.write("\n".join(urls) + "\n")
        args = ["h2load", "--h1", "-c", str(per[i]), "-m", "1", "-D", str(SECONDS), "-d", value,
                "-H", ":method: PUT", "--log-file", log, "-i", urifile]
        command = command or " ".join(args)
        procs.append(subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        logs.append(log)
    for p in procs:
        p.communicate()
    times, ok, failed = [], 0, 0
    for log in logs:
        with open(log) as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                status, micros = int(parts[1]), int(parts[2])
                if 200 <= status < 300:
                    ok += 1
                    times.append(micros / 1000)
                else:
                    failed += 1
        os.remove(log)  # h2load appends to its log file
    return Load(times, ok, failed, SECONDS, command)


class Skein(Nodes):
    def __init__(self, base):
        super().__init__(BIN, base, prefix="skein-bench-kv-")

    def leaders(self, via):
        v = self.view(via, timeout=1)
        if not v or len(v.get("partitions", [])) != PARTITIONS:
            return None
        return {p["id"]: p.get("leader") for p in v["partitions"]}

    def wait_leaders(self, alive, timeout=30, balanced=False):
        """Waits until every live node sees every partition led by a live node (and, if asked,
        the leaders spread evenly over the live nodes, as the cluster settles after a start)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            views = [self.leaders(i) for i in alive]
            if all(v and all(l is not None and l in [f"n{j + 1}" for j in alive] for l in v.values()) for v in views):
                counts = [list(views[0].values()).count(f"n{j + 1}") for j in alive]
                if not balanced or max(counts) - min(counts) <= 1:
                    return views[0]
            time.sleep(0.05)
        if balanced:
            return self.wait_leaders(alive, timeout=5)
        raise SystemExit("bench: partitions did not all get a leader among the live nodes")


def failover(cluster, rounds):
    """SIGKILL the node leading the most partitions; time until each of them takes a write."""
    results = []
    for r in range(rounds):
        leaders = cluster.wait_leaders([0, 1, 2])
        counts = {}
        for p, l in leaders.items():
            counts[l] = counts.get(l, 0) + 1
        victim_name = max(counts, key=counts.get)
        victim = int(victim_name[1:]) - 1
        via = (victim + 1) % 3
        theirs = [p for p, l in leaders.items() if l == victim_name]
        keys = {}
        i = 0
        while len(keys) < len(theirs):
            k = f"failover-{r}-{i}"
            if partition_of(k) in theirs and partition_of(k) not in keys:
                keys[partition_of(k)] = k
            i += 1
        recovered = {}
        killed_at = [None]
        stop = threading.Event()

        def writer(p, key):
            conn = http.client.HTTPConnection("127.0.0.1", cluster.client[via], timeout=5)
            while not stop.is_set():
                started = time.time()
                try:
                    conn.request("PUT", f"/v1/kv/{key}", body=VALUE)
                    resp = conn.getresponse()
                    resp.read()
                    done = time.time()
                    if resp.status == 204 and killed_at[0] is not None and started >= killed_at[0] and p not in recovered:
                        # The first write that started after the kill and succeeded.
                        recovered[p] = done - killed_at[0]
                except Exception:
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", cluster.client[via], timeout=5)
                time.sleep(0.005)

        threads = [threading.Thread(target=writer, args=(p, k), daemon=True) for p, k in keys.items()]
        for t in threads:
            t.start()
        time.sleep(1.0)
        cluster.procs[victim].send_signal(signal.SIGKILL)
        cluster.procs[victim].wait()
        killed_at[0] = time.time()
        deadline = time.time() + 15
        while len(recovered) < len(keys) and time.time() < deadline:
            time.sleep(0.01)
        stop.set()
        for t in threads:
            t.join()
        worst = max(recovered.values()) if len(recovered) == len(keys) else float("inf")
        results.append(worst)
        print(f"  failover {r + 1}: killed {victim_name} (led {len(theirs)} partitions); writes to all of them again after {worst * 1000:.0f} ms", file=sys.stderr)
        cluster.start(victim)
    return results


def interval(ratios):
    """A 95% confidence interval of the ratio from paired rounds' ratios (Student's t over their
    logarithms); (None, None) from a single round."""
    n = len(ratios)
    if n < 2:
        return None, None
    logs = [math.log(r) for r in ratios]
    mean = sum(logs) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in logs) / (n - 1))
    t = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228][n - 2] if n <= 11 else 2.0
    h = t * sd / math.sqrt(n)
    return math.exp(mean - h), math.exp(mean + h)


def dqlite_round(workdir, base, r):
    """One round on a fresh 3-node dqlite cluster; a Load, or None without dqlite-demo."""
    if not shutil.which("dqlite-demo"):
        return None
    procs = []
    api = [base + i for i in range(1, 4)]
    db = [base + 100 + i for i in range(1, 4)]
    try:
        for i in range(3):
            d = os.path.join(workdir, f"dq{r}-{i}")
            os.makedirs(d, exist_ok=True)
            args = ["dqlite-demo", "-a", f"127.0.0.1:{api[i]}", "-d", f"127.0.0.1:{db[i]}", "-D", d]
            if i > 0:
                args += ["-j", f"127.0.0.1:{db[0]}"]
            # Its share of the cores, as each Skein node gets (--event-loops).
            procs.append(subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                          env={**os.environ, "GOMAXPROCS": str(core_share(3))}))
            # Each joins the one before it is up.
            deadline = time.time() + 20
            while time.time() < deadline:
                try:
                    c = http.client.HTTPConnection("127.0.0.1", api[i], timeout=1)
                    c.request("PUT", "/warmup", body=b"x")
                    if c.getresponse().status < 500:
                        break
                except Exception:
                    pass
                time.sleep(0.2)
        time.sleep(2)
        urls = [[f"http://127.0.0.1:{api[n]}/dq-{r}-{n}-{i}" for i in range(2000)] for n in range(3)]
        return h2load(urls, workdir, "dqlite")
    finally:
        for p in procs:
            p.kill()
            p.wait()
        for i in range(3):
            shutil.rmtree(os.path.join(workdir, f"dq{r}-{i}"), ignore_errors=True)


def skein_round(workdir, r):
    """One round on a fresh 3-node Skein cluster: (Load, fsyncs per write)."""
    cluster = Skein(21000)
    try:
        for i in range(3):
            cluster.start(i)
        cluster.wait_leaders([0, 1, 2], balanced=True)
        before = cluster.commits()
        urls = [[f"http://127.0.0.1:{cluster.client[n]}/v1/kv/bench-{r}-{n}-{i}" for i in range(2000)] for n in range(3)]
        load = h2load(urls, workdir, "skein")
        return load, (cluster.commits() - before)
    finally:
        cluster.stop()


def main():
    work = tempfile.mkdtemp(prefix="skein-bench-kv-work-")
    try:
        floor = fsync_floor(work)
        print(f"fsync floor: SQLite WAL synchronous=FULL, one row per commit: {floor:,.0f} commits/s", file=sys.stderr)
        print(f"threads: the 3 nodes of each system share {os.cpu_count()} cores: each Skein node runs --event-loops {core_share(3)}, "
              f"each dqlite node GOMAXPROCS={core_share(3)}", file=sys.stderr)

        skein_loads, dq_loads, commits = [], [], 0
        for r in range(ROUNDS):
            # Skein first in odd rounds, dqlite first in even ones: neither always runs on the
            # machine the other just warmed or tired.
            for who in (("skein", "dqlite") if r % 2 == 0 else ("dqlite", "skein")):
                if who == "skein":
                    load, c = skein_round(work, r)
                    skein_loads.append(load)
                    commits += c
                    print(f"  round {r + 1} skein:  {load.rate:,.0f} acknowledged writes/s, p50 {load.pct(0.5):.1f} ms, p99 {load.pct(0.99):.1f} ms, {load.failed} failed", file=sys.stderr)
                else:
                    d = dqlite_round(work, 22000, r)
                    if d:
                        dq_loads.append(d)
                        print(f"  round {r + 1} dqlite: {d.rate:,.0f} acknowledged writes/s, p50 {d.pct(0.5):.1f} ms, p99 {d.pct(0.99):.1f} ms, {d.failed} failed", file=sys.stderr)
        sk = Load.merged(skein_loads)
        rate, p50, p99, failed, command = sk.rate, sk.pct(0.5), sk.pct(0.99), sk.failed, sk.command
        per_write = commits / sk.ok if sk.ok else float("nan")
        print(f"skein, {ROUNDS} rounds of {SECONDS} s: {rate:,.0f} acknowledged writes/s, p50 {p50:.1f} ms, p99 {p99:.1f} ms, {failed} failed; "
              f"{per_write:.3f} group commits (fsyncs) per write over the 3 nodes", file=sys.stderr)
        print(f"  load: 3 × `{command}` (one per node, {CONNECTIONS} connections in all, {SECONDS} s a round)", file=sys.stderr)
        dq = None
        if dq_loads:
            d = Load.merged(dq_loads)
            dq = (d.rate, d.pct(0.5), d.pct(0.99))
            ratios = [a.rate / b.rate for a, b in zip(skein_loads, dq_loads) if b.rate > 0]
            print(f"dqlite, {ROUNDS} rounds of {SECONDS} s: {d.rate:,.0f} acknowledged writes/s, p50 {dq[1]:.1f} ms, p99 {dq[2]:.1f} ms, {d.failed} failed", file=sys.stderr)
            if ratios:
                low, high = interval(ratios)
                print(f"  per-round ratios Skein/dqlite from {min(ratios):.2f} to {max(ratios):.2f}"
                      + (f"; 95% interval of the ratio {low:.3f}–{high:.3f}" if low else ""), file=sys.stderr)
        else:
            print("dqlite: dqlite-demo not installed (apt-get install go-dqlite)", file=sys.stderr)

        cluster = Skein(21000)
        try:
            for i in range(3):
                cluster.start(i)
            kills = failover(cluster, KILLS)
        finally:
            cluster.stop()

        print()
        print(f"| figure | Skein | dqlite | goal |")
        print(f"|---|---|---|---|")
        print(f"| acknowledged writes/s, {CONNECTIONS} connections | {rate:,.0f} | {dq[0]:,.0f} | ≥ 5,000 and ≥ dqlite |" if dq else
              f"| acknowledged writes/s, {CONNECTIONS} connections | {rate:,.0f} | – | ≥ 5,000 |")
        print(f"| p50 / p99 latency | {p50:.1f} / {p99:.1f} ms | " + (f"{dq[1]:.1f} / {dq[2]:.1f} ms" if dq else "–") + " | p99 < 20 ms |")
        print(f"| fsyncs per write (3 nodes together) | {per_write:.3f} | – | < 3 (group commit beats one per write per node) |")
        print(f"| fsync floor, one row per commit | {floor:,.0f} commits/s | | |")
        print(f"| SIGKILL of a leader → its partitions take writes again | max {max(kills) * 1000:.0f} ms, median {statistics.median(kills) * 1000:.0f} ms over {len(kills)} | | < 1.5 s |")
        low, high = interval([a.rate / b.rate for a, b in zip(skein_loads, dq_loads) if b.rate > 0]) if dq else (None, None)
        print(f"| ratio writes/s Skein / dqlite | " + (f"{rate / dq[0]:.3f}" if dq else "–")
              + (f" (95% interval {low:.3f}–{high:.3f})" if low else "") + " | | ≥ 1 |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
