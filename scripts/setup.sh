#!/usr/bin/env bash
# Sets up what is missing on a Debian 12 machine (as root), builds pyusdt and runs it on the
# bundled example: only what building and running pyusdt needs, so that the first trace comes
# quickly. `--deps-only` instead installs everything the test suite needs as well, and stops
# there (scripts/test.sh runs it).
set -euo pipefail
cd "$(dirname "$0")/.."

TESTS=false
[ "${1:-}" = "--deps-only" ] && TESTS=true

# Build: clang (BPF, CO-RE), libelf/zlib/pkg-config/make (vendored libbpf), gcc (cc crate).
# Run: Debian's CPython 3.11 built --with-dtrace, and its libpython (the example).
PACKAGES=(clang libelf-dev zlib1g-dev pkg-config make gcc libc6-dev python3.11 libpython3.11)
# Tests: python3.11-config (python3.11-dev, for the embedding test), binutils (readelf),
# util-linux (setpriv, unshare), systemtap-sdt-dev (<sys/sdt.h>, for a PIE test fixture with
# markers), libcap2-bin (setcap: a test runs pyusdt as nobody with the file capabilities it
# advises), tmux (drives the full-screen view of `top` in a test).
# python3.11-venv: a private virtualenv with the official OTLP protobuf bindings, to check the
# file exporter's OTLP/JSON (tests/otlp_delivery.rs).
# prometheus (promtool): scripts/deploy-check.sh tests the alert rules and dashboard on a real
# Prometheus (it renders the Helm chart with real Helm, from PyPI's helm-python-sdk).
# bpftrace: the reference the benchmarks in bench/ measure pyusdt against. bpftool: tests read
# the agent's BPF maps and links.
if $TESTS; then
  PACKAGES+=(systemtap-sdt-dev tmux python3.11-dev python3.11-venv binutils util-linux
             libcap2-bin prometheus bpftrace bpftool)
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing Debian packages: ${missing[*]} (run this script as root)" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "setup: Debian packages present"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: no Rust toolchain: install Rust >= 1.85 (https://rustup.rs) and re-run" >&2
  exit 1
fi

if ! $TESTS; then
  cargo build --release --locked
  echo
  echo "setup: tracing the bundled example (examples/app.py) with gc, import and audit markers:"
  echo "+ target/release/pyusdt run --probes gc,import,audit -- /usr/bin/python3.11 examples/app.py"
  exec target/release/pyusdt run --probes gc,import,audit -- /usr/bin/python3.11 examples/app.py
fi

# What only the tests need, from here on.
# Pinned so that the test checks against a known protobuf JSON mapping.
VENV=target/otlp-venv
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import opentelemetry.proto" 2>/dev/null; then
  echo "setup: creating $VENV (opentelemetry-proto, protobuf from PyPI)"
  /usr/bin/python3.11 -m venv "$VENV"
  "$VENV/bin/pip" install -q "opentelemetry-proto==1.45.2" "protobuf==7.36.2"
fi

# cargo-deny checks the dependency tree's licenses, sources and bans (scripts/test.sh). Built
# from crates.io: about 6 minutes cold on two cores, once.
DENY_VERSION=0.20.2
if ! cargo deny --version 2>/dev/null | grep -q "$DENY_VERSION"; then
  echo "setup: installing cargo-deny $DENY_VERSION (cargo install)"
  cargo install --quiet --locked cargo-deny --version "$DENY_VERSION"
fi

# CPython 3.9, 3.13 (built), 3.14 and 3.15 (Debian's binaries) with markers, for the version
# matrix of the tests (cached outside the repo: about 5 minutes cold, seconds warm).
bash scripts/python-matrix.sh >/dev/null
# 3.11 and 3.13 built like the official images (no markers, LTO, stripped; 3.13 also with PGO),
# for the hook points of builds without markers (tests/hooks.rs): about 26 minutes cold,
# seconds warm.
PYUSDT_MATRIX_VERSIONS="3.11-official 3.13-official 3.13-official-pgo" bash scripts/python-matrix.sh >/dev/null

