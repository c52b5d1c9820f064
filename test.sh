#!/usr/bin/env bash
# Runs every cairn test on a fresh Debian machine with only the Rust toolchain:
# installs the test dependencies (real Nix, gRPC client), then checks formatting,
# lints, and runs the whole test suite. CI (.ci/run) calls exactly this.
set -euo pipefail
cd "$(dirname "$0")"
scripts/install-test-deps.sh
export CAIRN_TEST_VENV=${CAIRN_TEST_VENV:-/opt/cairn-test-venv}
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
echo "test.sh: ALL OK"
