"""Three (or N) Skein node processes on loopback for the benchmarks: start, stop, views."""
import json
import os
import shutil
import subprocess
import tempfile
import urllib.request


def core_share(count):
    """Each of `count` processes sharing this machine gets this many cores' worth of threads."""
    return max(1, (os.cpu_count() or 1) // count)


class Nodes:
    """n1…nN with client ports base+1…, peer ports base+1001…, fresh data under a temp dir."""

    def __init__(self, binary, base, count=3, prefix="skein-bench-"):
        self.binary = binary
        self.secret = os.urandom(16).hex()
        self.dir = tempfile.mkdtemp(prefix=prefix)
        self.client = [base + i for i in range(1, count + 1)]
        self.peer = [base + 1000 + i for i in range(1, count + 1)]
        self.procs = [None] * count

    def start(self, i):
        data = os.path.join(self.dir, f"n{i + 1}")
        os.makedirs(data, exist_ok=True)
        log = open(os.path.join(data, "node.log"), "ab")
        seeds = ",".join(f"127.0.0.1:{p}" for p in self.peer)
        self.procs[i] = subprocess.Popen(
            [self.binary, "node", "--name", f"n{i + 1}", "--listen", f"127.0.0.1:{self.client[i]}",
             "--peer", f"127.0.0.1:{self.peer[i]}", "--seeds", seeds, "--data", data, "--log-level", "notice",
             "--slow-request-ms", "1000000", "--event-loops", str(core_share(len(self.procs)))],
            stdout=log, stderr=log, env={**os.environ, "SKEIN_CLUSTER_SECRET": self.secret})

    def view(self, i, timeout=2):
        """GET /v1/cluster of node i, or None."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.client[i]}/v1/cluster", timeout=timeout) as r:
                return json.load(r)
        except Exception:
            return None

    def running(self, i):
        return self.procs[i] is not None and self.procs[i].poll() is None

    def commits(self):
        """Group commits that fsynced, summed over the running nodes."""
        return sum(((self.view(i) or {}).get("log") or {}).get("commits", 0) for i in range(len(self.procs)) if self.running(i))

    def stop(self):
        for p in self.procs:
            if p and p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
