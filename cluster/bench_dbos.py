"""The DBOS Transact baseline for cluster/bench workflows (BENCHMARKS.md): one process, SQLite
system database, workflows of N @DBOS.step() calls, 16 workflows at a time.

Run with the venv's python: bench_dbos.py DIR SECONDS STEPS
Prints one JSON line: {"steps_per_s", "p50_ms", "p99_ms", "synchronous", "journal_mode"}.
"""
import json
import os
import sqlite3
import statistics
import sys
import threading
import time

from dbos import DBOS, DBOSConfig

DIR, SECONDS, STEPS = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
PATH = os.path.join(DIR, "dbos.sqlite")
config: DBOSConfig = {"name": "skein-bench", "system_database_url": f"sqlite:///{PATH}", "log_level": "ERROR"}
DBOS(config=config)


@DBOS.step()
def step(i: int) -> int:
    return i


@DBOS.workflow()
def steps(n: int) -> int:
    for i in range(n):
        step(i)
    return n


DBOS.launch()

# Throughput: 16 workflows at a time, each of STEPS steps, for SECONDS.
done = [0]
lock = threading.Lock()
stop = time.time() + SECONDS


def worker():
    while time.time() < stop:
        steps(STEPS)
        with lock:
            done[0] += STEPS


threads = [threading.Thread(target=worker) for _ in range(16)]
started = time.time()
for t in threads:
    t.start()
for t in threads:
    t.join()
elapsed = time.time() - started

# Latency: a 3-step workflow, one at a time.
latencies = []
for _ in range(200):
    t0 = time.perf_counter()
    steps(3)
    latencies.append((time.perf_counter() - t0) * 1000)
latencies.sort()

db = sqlite3.connect(PATH)
journal = db.execute("PRAGMA journal_mode").fetchone()[0]
db.close()
print(json.dumps({
    "steps_per_s": done[0] / elapsed,
    "p50_ms": latencies[len(latencies) // 2],
    "p99_ms": latencies[int(len(latencies) * 0.99)],
    "journal_mode": journal,
}))
DBOS.destroy()
