#!/usr/bin/env bash
# BPF time per program run, as the kernel accounts it (kernel.bpf_stats_enabled; bpftool's
# run_time_ns / run_cnt), for pyusdt's programs and bpftrace's count() on the same markers:
#   - function probes with a span per call, on the 3.9 build's fib (function_entry/return),
#     and `top`'s counter (count_entry) under `top -- CMD`;
#   - the audit marker on Debian's python3.11, a loop of id() calls (one audit event each),
#     with a record per event and counted in the kernel (--metrics-only), and bpftrace's
#     count() and printf() (its record per event) there.
# Needs root, bpftool, bpftrace, the 3.9 build (scripts/setup.sh) and a release build.
#
#     bash bench/bpf_time.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYUSDT=${PYUSDT:-target/release/pyusdt}  # another build: PYUSDT=path bash bench/bpf_time.sh
PY39=/var/cache/pyusdt-test/python-3.9/bin/python3.9
LIB39=/var/cache/pyusdt-test/python-3.9/lib/libpython3.9.so.1.0
PY311=/usr/bin/python3.11
for need in "$PYUSDT" "$PY39" "$PY311" /usr/sbin/bpftool /usr/bin/bpftrace; do
  [ -x "$need" ] || { echo "bench: $need missing (scripts/setup.sh, cargo build --release)" >&2; exit 1; }
done
[ "$(id -u)" -eq 0 ] || { echo "bench: needs root" >&2; exit 1; }

FIB='import time
def fib(n): return n if n < 2 else fib(n - 1) + fib(n - 2)
end = time.time() + 4
while time.time() < end: fib(20)'
IDS='import time
end = time.time() + 4
while time.time() < end:
    for i in range(10000): id(i)'

# Prints "name runs ns/run" for the function, counting and audit programs that ran more than 10,000
# times (one tracer runs at a time, and the counts start when the statistics are switched on).
per_run() {
  bpftool -j prog show | python3 -c '
import json, sys
for p in json.load(sys.stdin):
    runs, name = p.get("run_cnt", 0), p.get("name", "")
    if runs > 10000 and any(k in name for k in ("function", "audit", "count")):
        ns = p["run_time_ns"] / runs
        print(f"  {name:<18} {runs:>10,} runs {ns:>7.0f} ns/run")
'
}

# The tracer and workload running now: ended by their PIDs, whatever happens.
tracer='' work=''
cleanup() {
  for pid in $work $tracer; do kill -INT "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  sysctl -q kernel.bpf_stats_enabled=0
}
trap cleanup EXIT

# $1: label; $2: python; $3: code; the rest: the tracer's command line.
measure() {
  local label=$1 python=$2 code=$3
  shift 3
  "$@" >/dev/null 2>&1 &
  tracer=$!
  sleep 3
  "$python" -c "$code" &
  work=$!
  sleep 3
  echo "$label"
  per_run
  wait "$work"
  kill -INT "$tracer"
  wait "$tracer" || true
  tracer='' work=''
}

sysctl -q kernel.bpf_stats_enabled=1
measure "pyusdt agent --probes function --min-duration 0 (3.9 fib, a span per call)" "$PY39" "$FIB" \
  "$PYUSDT" agent --quiet --probes function --min-duration 0 --max-overhead off \
  --exporter file --otlp-file /dev/null
measure "bpftrace count() on function__entry and function__return (3.9 fib)" "$PY39" "$FIB" \
  bpftrace -q -e "usdt:$LIB39:python:function__entry,usdt:$LIB39:python:function__return { @c = count(); }"
measure "pyusdt agent --probes gc,import,audit (3.11, id() loop)" "$PY311" "$IDS" \
  "$PYUSDT" agent --quiet --probes gc,import,audit
measure "pyusdt agent --probes gc,import,audit --metrics-only (3.11, id() loop, counted in the kernel)" "$PY311" "$IDS" \
  "$PYUSDT" agent --quiet --probes gc,import,audit --metrics-only
measure "bpftrace count() on audit (3.11, id() loop)" "$PY311" "$IDS" \
  bpftrace -q -e "usdt:$PY311:python:audit { @c = count(); }"
# bpftrace's way of sending a record per event, as pyusdt's log records do.
measure "bpftrace printf() of pid, tid, nsecs on audit (3.11, id() loop, a record per event)" \
  "$PY311" "$IDS" \
  bpftrace -q -e "usdt:$PY311:python:audit { printf(\"%d %d %lld\\n\", pid, tid, nsecs); }"

# `top -- CMD` traces its own command: the counter runs in the command's context, and every
# call also asks whether its process is traced.
echo "pyusdt top --once -- CMD (3.9 fib, counted in the kernel)"
"$PYUSDT" top --once --no-discover -- "$PY39" -c "$FIB" >/dev/null 2>&1 &
tracer=$!
sleep 3
per_run
wait "$tracer" || true
tracer=''
