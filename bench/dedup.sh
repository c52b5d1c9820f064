#!/usr/bin/env bash
# Dedup of the embedded store: store a 256 MiB file, change 1 KiB in the middle,
# store it again; prints the bytes the second version added (target: < 2 MiB).
# Usage: bench/dedup.sh [MiB]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q --release -p cairn-castore --example dedup
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
target/release/examples/dedup "$dir/data" "${1:-256}"
echo "du -sb of the data dir: $(du -sb "$dir/data" | cut -f1)"
