#!/usr/bin/env python3
"""cluster/bench workflows: durable workflows on 3 real nodes on loopback, fsync on.

In one run:
  1. throughput: 200 `ledger-steps` instances at once (stepMs 0), started through all three
     nodes: durable steps/s (completed tasks / wall time) and fsyncs per step;
  2. latency: a 3-step workflow (`countdown` from 2: two loop iterations and the count task),
     one at a time through the three nodes in turn, start to completed (`?wait=`): p50 / p99;
  3. growth: one `ledger-steps` instance of 5,000 steps: the time per step around step 5,000
     against around step 10, from its timeline;
  4. failover: 100 running instances owned by one node; SIGKILL it; time from the kill until
     each instance resumes on a survivor (its timeline's `adopted` line), and how many never
     complete;
  5. beside it, DBOS Transact (BENCHMARKS.md): one process, SQLite system database, workflows
     of N steps, 16 at a time; and its 3-step workflow latency.

Usage: bench_workflows.py SKEIN_BIN [DBOS_PYTHON]
"""
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_nodes import Nodes  # noqa: E402
from datetime import datetime

BIN = sys.argv[1]
DBOS_PYTHON = sys.argv[2] if len(sys.argv) > 2 else None
PARTITIONS = 16
BASE = 24000


def request(port, method, path, body=None, timeout=130):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=json.dumps(body) if body is not None else None)
        r = conn.getresponse()
        data = r.read()
        try:
            return r.status, json.loads(data)
        except Exception:
            return r.status, None
    except Exception as e:
        return 0, str(e)
    finally:
        conn.close()


def partition_of(key):
    h = 0xcbf29ce484222325
    for b in key.encode():
        h ^= b
        h = (h * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h % PARTITIONS


def epoch_ms(iso):
    from datetime import timezone
    return datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp() * 1000


class Skein(Nodes):
    def __init__(self):
        super().__init__(BIN, BASE, prefix="skein-bench-wf-")

    def wait_settled(self, alive, timeout=40):
        """Every partition led by a live node, leadership spread and unchanged for 2 s."""
        deadline = time.time() + timeout
        last, since = None, time.time()
        while time.time() < deadline:
            v = self.view(alive[0])
            leaders = tuple(p.get("leader") for p in (v or {}).get("partitions", []))
            names = [f"n{j + 1}" for j in alive]
            ok = len(leaders) == PARTITIONS and all(l in names for l in leaders)
            counts = [leaders.count(n) for n in names]
            if ok and max(counts) - min(counts) <= 1 and leaders == last:
                if time.time() - since > 2:
                    return {p["id"]: p["leader"] for p in v["partitions"]}
            else:
                last, since = leaders, time.time()
            time.sleep(0.1)
        raise SystemExit("bench: leadership did not settle")


def run_all(cluster, specs, threads=64):
    """Starts each (port, workflow, id, input) with ?wait=120; returns the final statuses."""
    results = {}
    lock = threading.Lock()
    queue = list(specs)

    def worker():
        while True:
            with lock:
                if not queue:
                    return
                port, workflow, iid, body = queue.pop()
            status, answer = 0, None
            for _ in range(20):
                status, answer = request(port, "POST", f"/v1/workflows/{workflow}/instances?wait=120",
                                         {"id": iid, "input": body, "conflictPolicy": "useExisting"})
                if status in (200, 202):
                    break
                time.sleep(0.2)
            with lock:
                results[iid] = answer
    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return results


def throughput(cluster, count=200, steps=30):
    cluster.wait_settled([0, 1, 2])
    before = cluster.commits()
    specs = [(cluster.client[i % 3], "ledger-steps", f"tp-{i}", {"steps": steps, "stepMs": 0}) for i in range(count)]
    started = time.time()
    results = run_all(cluster, specs, threads=count)
    elapsed = time.time() - started
    done = [r for r in results.values() if isinstance(r, dict) and r.get("status") == "completed"]
    tasks = sum(r.get("completedTasks", 0) for r in done)
    fsyncs = cluster.commits() - before
    return tasks / elapsed, fsyncs / tasks if tasks else float("nan"), len(done), tasks, elapsed


def latency(cluster, runs=200):
    times = []
    for i in range(runs):
        port = cluster.client[i % 3]
        t0 = time.perf_counter()
        status, answer = request(port, "POST", "/v1/workflows/countdown/instances?wait=10", {"id": f"lat-{i}", "input": {"from": 2}})
        elapsed = (time.perf_counter() - t0) * 1000
        if status == 200 and answer.get("status") == "completed":
            times.append(elapsed)
    times.sort()
    return times[len(times) // 2], times[int(len(times) * 0.99)], len(times)


def growth(cluster, steps=5000):
    status, answer = request(cluster.client[0], "POST", "/v1/workflows/ledger-steps/instances?wait=300",
                             {"id": "long", "input": {"steps": steps, "stepMs": 0}}, timeout=320)
    if status != 200 or answer.get("status") != "completed":
        return None
    _, timeline = request(cluster.client[0], "GET", "/v1/instances/long/timeline")
    done = {}
    for line in timeline:
        if line.get("kind") == "task_completed" and line.get("task", "").startswith("step#"):
            done[int(line["task"].split("#")[1])] = epoch_ms(line["at"])

    def per_step(lo, hi):
        return (done[hi] - done[lo]) / (hi - lo)
    # 500-step windows: single steps take a few ms and vary with whatever else the two cores do.
    early, late = per_step(10, 510), per_step(steps - 500, steps)
    return early, late, late / early if early > 0 else float("nan")


def failover(cluster, count=100):
    leaders = cluster.wait_settled([0, 1, 2])
    counts = {}
    for p, l in leaders.items():
        counts[l] = counts.get(l, 0) + 1
    victim_name = max(counts, key=counts.get)
    victim = int(victim_name[1:]) - 1
    theirs = {p for p, l in leaders.items() if l == victim_name}
    ids, i = [], 0
    while len(ids) < count:
        k = f"fo-{i}"
        if partition_of(k) in theirs:
            ids.append(k)
        i += 1
    survivors = [j for j in range(3) if j != victim]
    for n, k in enumerate(ids):
        request(cluster.client[survivors[n % 2]], "POST", "/v1/workflows/ledger-steps/instances",
                {"id": k, "input": {"steps": 40, "stepMs": 100}})
    time.sleep(1.0)
    cluster.procs[victim].send_signal(signal.SIGKILL)
    cluster.procs[victim].wait()
    killed = time.time() * 1000
    resumed, completed = {}, set()
    deadline = time.time() + 60
    while time.time() < deadline and len(completed) < count:
        for k in ids:
            if k in completed:
                continue
            port = cluster.client[survivors[0]]
            if k not in resumed:
                s, tl = request(port, "GET", f"/v1/instances/{k}/timeline", timeout=5)
                if s == 200:
                    for line in tl:
                        if line.get("kind") == "adopted":
                            resumed[k] = epoch_ms(line["at"]) - killed
            s, st = request(port, "GET", f"/v1/instances/{k}", timeout=5)
            if s == 200 and st.get("status") == "completed":
                completed.add(k)
        time.sleep(0.2)
    values = sorted(resumed.values())
    p = lambda q: values[min(len(values) - 1, int(len(values) * q))] if values else float("nan")
    return victim_name, p(0.5), p(0.99), len(values), count - len(completed)


def dbos(workdir):
    if not DBOS_PYTHON:
        return None
    d = os.path.join(workdir, "dbos")
    os.makedirs(d, exist_ok=True)
    out = subprocess.run([DBOS_PYTHON, os.path.join(os.path.dirname(__file__), "bench_dbos.py"), d, "10", "30"],
                         capture_output=True, text=True, timeout=600)
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except Exception:
        print(f"dbos: failed: {out.stderr[-500:]}", file=sys.stderr)
        return None


def main():
    work = tempfile.mkdtemp(prefix="skein-bench-wf-work-")
    cluster = Skein()
    try:
        for i in range(3):
            cluster.start(i)
        rate, per_step, done, tasks, elapsed = throughput(cluster)
        print(f"throughput: {done}/200 ledger-steps instances (30 steps, stepMs 0) completed; {tasks} tasks in {elapsed:.1f} s "
              f"= {rate:,.0f} durable steps/s; {per_step:.3f} fsyncs per step over the 3 nodes", file=sys.stderr)
        p50, p99, n = latency(cluster)
        print(f"latency: 3-step workflow (countdown from 2), start to completed, one at a time: p50 {p50:.1f} ms, p99 {p99:.1f} ms ({n} runs)", file=sys.stderr)
        g = growth(cluster)
        if g:
            print(f"growth: one 5,000-step instance: {g[0]:.2f} ms per step over steps 10..510, {g[1]:.2f} ms over steps 4,500..5,000 ({g[2]:.2f}×)", file=sys.stderr)
        victim, f50, f99, resumed, lost = failover(cluster)
        print(f"failover: SIGKILL of {victim} owning 100 running instances: resumed on a survivor after p50 {f50:.0f} ms, p99 {f99:.0f} ms "
              f"({resumed} adoptions seen); {lost} did not complete", file=sys.stderr)
    finally:
        cluster.stop()
    d = dbos(work)
    if d:
        print(f"dbos: {d['steps_per_s']:,.0f} durable steps/s (16 workflows of 30 steps at a time, SQLite journal {d['journal_mode']}); "
              f"3-step workflow p50 {d['p50_ms']:.1f} ms, p99 {d['p99_ms']:.1f} ms", file=sys.stderr)
    shutil.rmtree(work, ignore_errors=True)
    print()
    print("| figure | Skein (3 nodes, replicated) | DBOS (1 process) | goal |")
    print("|---|---|---|---|")
    print(f"| durable steps/s | {rate:,.0f} | " + (f"{d['steps_per_s']:,.0f}" if d else "–") + " | ≥ 3,000 and ≥ 10× DBOS |")
    print(f"| fsyncs per step (3 nodes together) | {per_step:.3f} | – | |")
    print(f"| 3-step workflow p50 / p99 | {p50:.1f} / {p99:.1f} ms | " + (f"{d['p50_ms']:.1f} / {d['p99_ms']:.1f} ms" if d else "–") + " | p50 ≤ 10 ms |")
    if g:
        print(f"| step 5,000 vs step 10 | {g[2]:.2f}× ({g[1]:.2f} vs {g[0]:.2f} ms) | | ≤ 1.2× |")
    print(f"| owner SIGKILLed → instances resume | p50 {f50:.0f} ms, p99 {f99:.0f} ms; {lost} of 100 lost | | p99 ≤ 2 s, 0 lost |")
    if d:
        print(f"| ratio durable steps/s Skein / DBOS | {rate / d['steps_per_s']:.1f} | | ≥ 10 |")


if __name__ == "__main__":
    main()
