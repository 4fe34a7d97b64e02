#!/usr/bin/env bash
# The user-space path (benches/userspace.rs, `decode+otlp_sink+encode` by default) of this
# checkout against another commit, side by side: both bench binaries are built (release
# profile, fat LTO: about 4 minutes each), then run alternately, and the medians of their
# throughputs and the ratio are printed. Alternating runs share the machine's noise, which on
# a shared 2-core machine moves a single run by ±20 %.
#
#     bash bench/userspace_ab.sh BASE_COMMIT [ROUNDS] [STAGE]
#
# STAGE: decode, decode+model or decode+otlp_sink+encode.
set -euo pipefail
cd "$(dirname "$0")/.."
base=${1:?usage: bench/userspace_ab.sh BASE_COMMIT [ROUNDS] [STAGE]}
rounds=${2:-6}
stage=${3:-decode+otlp_sink+encode}
git rev-parse --verify -q "$base^{commit}" >/dev/null || { echo "bench: no commit $base" >&2; exit 1; }
target="$PWD/target"

work=$(mktemp -d)
cleanup() {
  git worktree remove --force "$work/base" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Builds the bench of the tree in $1 and copies its binary to $2. Both trees share target/ (the
# dependencies are built once); their sources are touched so that cargo does not take one
# tree's build for the other's (it compares modification times, not contents).
build() {
  local tree=$1 out=$2
  find "$tree/src" "$tree/benches" "$tree/bpf" -type f -exec touch {} +
  local bin
  bin=$(cd "$tree" && CARGO_TARGET_DIR="$target" \
    cargo bench --locked --bench userspace --no-run --message-format=json 2>/dev/null |
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "userspace" and m.get("executable"):
        print(m["executable"])')
  [ -x "$bin" ] || { echo "bench: building the bench in $tree failed" >&2; exit 1; }
  cp "$bin" "$out"
}

git worktree add -q --detach "$work/base" "$base"
echo "building $base ..." >&2
build "$work/base" "$work/bench-base"
echo "building this checkout ..." >&2
build "$PWD" "$work/bench-this"

# The stage's name as a regex: criterion filters by regex, and '+' is special.
filter="^userspace/${stage//+/\\+}\$"
for r in $(seq "$rounds"); do
  for which in base this; do
    # The whole output first: grep -m1 would end the bench with SIGPIPE (and pipefail).
    out=$("$work/bench-$which" --bench "$filter" 2>/dev/null) || true
    thrpt=$(grep -m1 'thrpt:' <<<"$out" | awk '{print $4 " " $5}') || true
    [ -n "$thrpt" ] || { echo "bench: no throughput from the $which bench" >&2; exit 1; }
    echo "$which $thrpt"
  done
done | python3 -c '
import statistics, sys
runs = {"base": [], "this": []}
scale = {"Kelem/s": 1e-3, "Melem/s": 1.0, "Gelem/s": 1e3}
for line in sys.stdin:
    which, value, unit = line.split()
    runs[which].append(float(value) * scale[unit])
    print(f"  {which:<5} {runs[which][-1]:.2f} M records/s", flush=True)
b, t = statistics.median(runs["base"]), statistics.median(runs["this"])
n = len(runs["this"])
print(f"medians of {n} alternating runs: base {b:.2f} M/s, this {t:.2f} M/s, ratio {t / b:.2f}x")
'
