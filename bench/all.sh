#!/usr/bin/env bash
# Every benchmark of bench/README.md, one after the other (about 10 minutes on
# a 2-core machine; run it on a quiet one). Needs root, bpftrace, Debian's python3.11 and the
# 3.9 build of scripts/python-matrix.sh (scripts/setup.sh provides them all); any missing
# prerequisite stops it with an error, never a partial table.
#
# At the end it writes its whole output, with the date, the commit and the machine, into the
# section of bench/README.md between the `bench/all.sh` markers (bench/write_readme.py):
# the figures there are this script's own, never typed by hand. --no-write leaves it alone.
set -euo pipefail
cd "$(dirname "$0")/.."
write=1
[ "${1:-}" = "--no-write" ] && write=0
PY39=/var/cache/pyusdt-test/python-3.9/bin/python3.9
PY315=/var/cache/pyusdt-test/python-3.15/bin/python3.15
# Built like the official images, with PGO (scripts/python-matrix.sh); pyenv's 3.13.0 keeps its
# symbol table, which bpftrace needs to probe sys_audit_tstate by name.
PY313PGO=/var/cache/pyusdt-test/python-3.13-official-pgo/bin/python3.13
PYENV313=$HOME/.pyenv/versions/3.13.0
for p in "$PY39" "$PY315" "$PY313PGO"; do
  [ -x "$p" ] || { echo "bench: $p missing: run scripts/setup.sh" >&2; exit 1; }
done
cargo build --release --locked -q
out=$(mktemp)
trap 'rm -f "$out"' EXIT
started=$(date -u +%Y-%m-%dT%H:%MZ)
{

echo "== default probes and the audit marker: bench/overhead.py"
python3 bench/overhead.py --runs 7
echo
echo "== the audit marker, cost per event: bench/audit_cost.py"
python3 bench/audit_cost.py --runs 7
echo
echo "== builds without markers: default probes (bench/overhead.py) and audit per event at the hook point"
python3 bench/overhead.py --runs 7 --without-markers "$PY313PGO"
if [ -x "$PYENV313/bin/python3.13" ]; then
  python3 bench/audit_cost.py --runs 7 --hook "$PYENV313/lib/libpython3.13.so.1.0" --python "$PYENV313/bin/python3.13"
else
  echo "audit at the hook point: not measured (no pyenv 3.13.0 here: bpftrace needs a symbol table)"
fi
echo
echo "== function probes, cost per call: bench/function_cost.py (3.9, 3.15, then Debian's 3.11)"
python3 bench/function_cost.py --runs 5 --python "$PY39"
python3 bench/function_cost.py --runs 5 --python "$PY315"
python3 bench/function_cost.py --runs 5
echo
echo "== the overhead budget: bench/budget.py"
python3 bench/budget.py --runs 3 --seconds 10
echo
echo "== what tracing a command costs other Pythons: bench/bystander.py"
python3 bench/bystander.py --runs 5
echo
echo "== BPF time per program run: bench/bpf_time.sh"
bash bench/bpf_time.sh
echo
echo "== the agent's footprint: bench/footprint.py"
python3 bench/footprint.py --runs 3
echo
echo "== the user-space path: cargo bench --bench userspace"
cargo bench --locked --bench userspace 2>&1 | grep -E "^workload|^allocations|^userspace|thrpt"
} 2>&1 | tee "$out"
if [ "$write" = 1 ]; then
  python3 bench/write_readme.py "$out" "$started"
fi
