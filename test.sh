#!/usr/bin/env bash
# Runs every cairn test on a fresh Debian machine with only the Rust toolchain:
# installs the test dependencies (real Nix, gRPC client), then checks formatting,
# lints, and runs the whole test suite. CI (.ci/run) calls exactly this.
set -euo pipefail
cd "$(dirname "$0")"
scripts/install-test-deps.sh
export CAIRN_TEST_VENV=${CAIRN_TEST_VENV:-/opt/cairn-test-venv}
# A one-off build gains nothing from incremental state, which would double target/.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
echo "test.sh: ALL OK"
