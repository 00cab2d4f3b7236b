#!/usr/bin/env python3
"""cluster/bench membership: failure detection and gossip traffic of real nodes on loopback.

For 3 and 5 nodes: 20 SIGKILLs of a random node each, timing kill -> every survivor reports
the victim `dead` in GET /v1/cluster (polled every 10 ms per survivor); pauses of 500 ms
(SIGSTOP, SIGCONT) that must never produce `dead`; and each node's peer traffic (bytes in
plus out on its peer connections, from /v1/cluster's `gossip`) over an idle period: all of
it, and the membership share (all of it less the Raft and call streams' frames, which
/v1/cluster counts as `streamBytesIn/Out`: gossip plus the connections' own upkeep). The
traffic goal is membership's.

Usage: cluster_bench_membership.py BIN [KILLS] [PAUSES]
"""
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

BIN = sys.argv[1]
KILLS = int(sys.argv[2]) if len(sys.argv) > 2 else 20
PAUSES = int(sys.argv[3]) if len(sys.argv) > 3 else 10
SECRET = os.urandom(16).hex()
GOAL_P50, GOAL_MAX, GOAL_TRAFFIC = 1.0, 2.0, 10_000


def view(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/cluster", timeout=1) as r:
            return json.load(r)
    except Exception:
        return None


class Cluster:
    def __init__(self, n, base):
        self.n = n
        self.dir = tempfile.mkdtemp(prefix=f"skein-bench-membership-{n}-")
        self.client = [base + i for i in range(1, n + 1)]
        self.peer = [base + 1000 + i for i in range(1, n + 1)]
        self.procs = [None] * n

    def start(self, i):
        data = os.path.join(self.dir, f"n{i + 1}")
        os.makedirs(data, exist_ok=True)
        log = open(os.path.join(data, "node.log"), "ab")
        seeds = ",".join(f"127.0.0.1:{p}" for p in self.peer)
        self.procs[i] = subprocess.Popen(
            [BIN, "node", "--name", f"n{i + 1}", "--listen", f"127.0.0.1:{self.client[i]}",
             "--peer", f"127.0.0.1:{self.peer[i]}", "--seeds", seeds, "--data", data, "--log-level", "notice"],
            stdout=log, stderr=log, env={**os.environ, "SKEIN_CLUSTER_SECRET": SECRET})

    def wait_converged(self, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            ok = 0
            for port in self.client:
                v = view(port)
                if v and len(v["members"]) == self.n and all(m["state"] == "alive" for m in v["members"]):
                    ok += 1
            if ok == self.n:
                return
            time.sleep(0.05)
        raise SystemExit(f"bench: {self.n} nodes did not converge within {timeout} s (logs in {self.dir})")

    def stop(self):
        for p in self.procs:
            if p and p.poll() is None:
                p.kill()
        for p in self.procs:
            if p:
                p.wait()


def time_to_dead(cluster, victim, generation, started):
    """Seconds from `started` until every survivor reports the victim dead."""
    seen = {}
    def watch(i):
        while time.time() - started < 10:
            v = view(cluster.client[i])
            if v:
                m = next((m for m in v["members"] if m["name"] == f"n{victim + 1}"), None)
                if m and m.get("generation") == generation and m["state"] == "dead":
                    seen[i] = time.time() - started
                    return
            time.sleep(0.01)
    threads = [threading.Thread(target=watch, args=(i,)) for i in range(cluster.n) if i != victim]
    for t in threads: t.start()
    for t in threads: t.join()
    if len(seen) < cluster.n - 1:
        return None
    return max(seen.values())


def run(n, base):
    cluster = Cluster(n, base)
    try:
        for i in range(n):
            cluster.start(i)
        cluster.wait_converged()
        time.sleep(1)

        # Idle gossip traffic per node.
        window = 10
        before = [view(p)["gossip"] for p in cluster.client]
        time.sleep(window)
        after = [view(p)["gossip"] for p in cluster.client]
        traffic = [((a["bytesIn"] - b["bytesIn"]) + (a["bytesOut"] - b["bytesOut"])) / window for a, b in zip(after, before)]
        out_only = [(a["bytesOut"] - b["bytesOut"]) / window for a, b in zip(after, before)]
        streams = [((a["streamBytesIn"] - b["streamBytesIn"]) + (a["streamBytesOut"] - b["streamBytesOut"])) / window for a, b in zip(after, before)]
        membership = [t - s for t, s in zip(traffic, streams)]

        # Pauses of 500 ms: suspect is allowed, dead is not.
        pause_dead = 0
        pause_suspect = 0
        for k in range(PAUSES):
            victim = random.randrange(n)
            name = f"n{victim + 1}"
            worst = {"dead": False, "suspect": False}
            stop_watch = threading.Event()
            def watch(i):
                while not stop_watch.is_set():
                    v = view(cluster.client[i])
                    if v:
                        m = next((m for m in v["members"] if m["name"] == name), None)
                        if m and m["state"] in worst:
                            worst[m["state"]] = True
                    time.sleep(0.01)
            threads = [threading.Thread(target=watch, args=(i,)) for i in range(n) if i != victim]
            for t in threads: t.start()
            cluster.procs[victim].send_signal(signal.SIGSTOP)
            time.sleep(0.5)
            cluster.procs[victim].send_signal(signal.SIGCONT)
            time.sleep(2.5)
            stop_watch.set()
            for t in threads: t.join()
            pause_dead += worst["dead"]
            pause_suspect += worst["suspect"]
            cluster.wait_converged()

        # SIGKILLs, each followed by a restart and convergence.
        times = []
        missed = 0
        for k in range(KILLS):
            victim = random.randrange(n)
            generation = view(cluster.client[victim])["generation"]
            started = time.time()
            cluster.procs[victim].kill()
            cluster.procs[victim].wait()
            t = time_to_dead(cluster, victim, generation, started)
            if t is None:
                missed += 1
            else:
                times.append(t)
            print(f"  {n} nodes, kill {k + 1}/{KILLS}: n{victim + 1} dead on every survivor after "
                  f"{'>10 s' if t is None else f'{t * 1000:.0f} ms'}", file=sys.stderr)
            cluster.start(victim)
            cluster.wait_converged()
            time.sleep(0.5)
        return {
            "n": n, "times": times, "missed": missed, "traffic": traffic, "out": out_only, "membership": membership,
            "pause_dead": pause_dead, "pause_suspect": pause_suspect,
        }
    finally:
        cluster.stop()


def main():
    results = [run(3, 18080), run(5, 18180)]
    print(f"membership: {KILLS} SIGKILLs and {PAUSES} SIGSTOPs of 500 ms per cluster size, real nodes on loopback")
    print(f"{'nodes':>5}  {'kill->all dead p50':>18}  {'max':>7}  {'missed':>6}  {'500ms pauses -> dead':>20}  {'-> suspect':>10}  {'membership traffic/node (in+out) mean, max':>42}  {'all peer traffic mean, max':>26}  {'all, out only max':>17}")
    ok = True
    for r in results:
        p50 = statistics.median(r["times"]) if r["times"] else float("nan")
        mx = max(r["times"]) if r["times"] else float("nan")
        print(f"{r['n']:>5}  {p50 * 1000:>15.0f} ms  {mx * 1000:>4.0f} ms  {r['missed']:>6}  {r['pause_dead']:>13} of {PAUSES:<4}  {r['pause_suspect']:>10}  "
              f"{statistics.mean(r['membership']) / 1000:>30.1f} KB/s, {max(r['membership']) / 1000:.1f} KB/s  "
              f"{statistics.mean(r['traffic']) / 1000:>14.1f} KB/s, {max(r['traffic']) / 1000:.1f} KB/s  {max(r['out']) / 1000:>12.1f} KB/s")
        ok &= p50 <= GOAL_P50 and mx <= GOAL_MAX and r["missed"] == 0 and r["pause_dead"] == 0
        if r["n"] == 5:
            ok &= max(r["membership"]) < GOAL_TRAFFIC
    print("all peer traffic includes the Raft streams: the 16 partitions' heartbeats (every 100 ms, one frame per follower) and their answers")
    print(f"goal (p50 <= 1 s, max <= 2 s, no pause -> dead, membership traffic < 10 KB/s per node at 5 nodes): {'met' if ok else 'NOT met'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
