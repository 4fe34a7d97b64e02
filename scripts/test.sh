#!/usr/bin/env bash
# The whole test suite: style, lints, unit tests and the end-to-end tests, which attach real
# BPF programs to Debian's /usr/bin/python3.11 (as root; with CI=true they fail rather than skip).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh --deps-only
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked
bash scripts/deploy-check.sh
