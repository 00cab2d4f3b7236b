# Shared by the cluster/ scripts: where nodes live and how to start one.
# Node nI: client port 8080+I, peer port 9080+I, data and log under cluster/data/nI/.
# For tests: SKEIN_CLUSTER_DATA moves the data, SKEIN_CLUSTER_PORT_BASE the ports (client
# base+I, peer base+1000+I), SKEIN_BIN names a built binary.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
data="${SKEIN_CLUSTER_DATA:-$root/cluster/data}"
base="${SKEIN_CLUSTER_PORT_BASE:-8080}"

# The scripts talk to nodes with curl and read JSON with python3: install what is missing.
missing=()
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
if [ ${#missing[@]} -gt 0 ]; then
  echo "cluster: installing ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
build="${SKEIN_BUILD:-debug}"

skein_bin() {
  if [ -z "${SKEIN_BIN:-}" ]; then
    [ -x "$root/.build/$build/skein" ] || echo "cluster: building skein ($build; a first build takes several minutes)…" >&2
    (cd "$root" && swift build -c "$build" --product skein 2>&1 | grep -E "error:" >&2) || true
    SKEIN_BIN="$(cd "$root" && swift build -c "$build" --show-bin-path)/skein"
    [ -x "$SKEIN_BIN" ] || { echo "cluster: no skein binary at $SKEIN_BIN (build failed?)" >&2; exit 1; }
  fi
  echo "$SKEIN_BIN"
}

node_index() {  # n3 -> 3
  local name="$1"
  [[ "$name" =~ ^n([0-9]+)$ ]] || { echo "cluster: node names are n1, n2, … (got '$name')" >&2; exit 2; }
  echo "${BASH_REMATCH[1]}"
}

node_pid() {  # prints the pid if the process exists (running or stopped)
  local f="$data/$1/pid"
  [ -f "$f" ] || return 1
  local pid; pid="$(cat "$f")"
  kill -0 "$pid" 2>/dev/null || return 1
  # A killed node whose parent has not reaped it is a zombie: not running.
  [ "$(awk '/^State:/ {print $2}' "/proc/$pid/status" 2>/dev/null)" != "Z" ] || return 1
  # The pid file outlives its process and pids are reused (32,768 of them by default): the
  # process must still be this node, started on this data directory.
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "--data $data/$1 " || return 1
  echo "$pid"
}

start_node() {  # start_node NAME: start nI in the background with the cluster's seeds and secret
  local name="$1" i; i="$(node_index "$name")"
  local size; size="$(cat "$data/size")"
  local seeds=""
  for j in $(seq 1 "$size"); do seeds="${seeds:+$seeds,}127.0.0.1:$((base + 1000 + j))"; done
  mkdir -p "$data/$name"
  local bin; bin="$(skein_bin)"
  local secret; secret="$(cat "$data/secret")"
  # The nodes share this machine: each gets its share of the cores as event loops.
  local loops=$(( $(nproc) / size )); [ "$loops" -ge 1 ] || loops=1
  (
    # The node outlives this script: it must not hold any descriptor the caller inherited
    # (a caller that waits for the script's pipes to close would wait for the node).
    for fd in /proc/$BASHPID/fd/*; do
      fd="${fd##*/}"; [ "$fd" -gt 2 ] 2>/dev/null && eval "exec $fd>&-" 2>/dev/null || true
    done
    SKEIN_CLUSTER_SECRET="$secret" exec nohup "$bin" node --name "$name" \
      --listen "127.0.0.1:$((base + i))" --peer "127.0.0.1:$((base + 1000 + i))" \
      --seeds "$seeds" --event-loops "$loops" --data "$data/$name" </dev/null >>"$data/$name/node.log" 2>&1
  ) &
  echo $! >"$data/$name/pid"
}

cluster_json() {  # cluster_json I: GET /v1/cluster from nI, or nothing
  curl -sf --max-time 1 "http://127.0.0.1:$((base + $1))/v1/cluster" 2>/dev/null || true
}

alive_count() {  # how many members nI sees alive
  cluster_json "$1" | python3 -c 'import json,sys
try: print(sum(1 for m in json.load(sys.stdin)["members"] if m["state"]=="alive"))
except Exception: print(0)'
}
