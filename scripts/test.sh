#!/usr/bin/env bash
# The whole test suite: style, lints, unit tests and the end-to-end tests, which attach real
# BPF programs to Debian's /usr/bin/python3.11 (as root; with CI=true they fail rather than skip).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh --deps-only
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked
# The adversarial suites once more, against the release build as it ships (fat LTO): hostile
# files, environments and HTTP clients, losses at the edges, secrets, a fresh host.
cargo build --release --locked
PYUSDT_BIN="$PWD/target/release/pyusdt" cargo test --locked --test hostile_files \
  --test hostile_env --test http_endpoint --test edges --test secrets --test fresh_host
# Dependencies: permissive licenses, crates.io only (deny.toml). Advisories need RustSec's
# database from github.com, which not every machine reaches: checked when it can be fetched.
cargo deny --locked check bans licenses sources
if cargo deny --locked fetch db >/dev/null 2>&1; then
  cargo deny --locked check advisories
else
  echo "NOTE: cargo deny advisories not checked: RustSec's database (github.com) is unreachable from this machine"
fi
bash scripts/deploy-check.sh
python3 scripts/check-doc-links.py
