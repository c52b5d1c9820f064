#!/usr/bin/env bash
# Storage on real data: 8 consecutive releases of a crate's source tree (default
# tokio 1.44.0 .. 1.47.0) from crates.io, imported one after another into ONE
# embedded data directory (files as blobs, Directory closures bottom-up). Prints
# `du -sb` of the data directory as a ratio to one release's NAR (`nix-store
# --dump` of the first release), and for reference the 8 NARs each compressed with
# `xz -6` (what a Nix binary cache stores). Target: at most 0.5x.
# Tarballs are cached in $CAIRN_BENCH_CACHE (default ~/.cache/cairn-bench), never
# committed. Usage: bench/storage.sh  (PKG=name VERSIONS="v1 v2 ..." to change)
set -euo pipefail
cd "$(dirname "$0")/.."
pkg=${PKG:-tokio}
vers=${VERSIONS:-"1.44.0 1.44.1 1.44.2 1.45.0 1.45.1 1.46.0 1.46.1 1.47.0"}
cache=${CAIRN_BENCH_CACHE:-$HOME/.cache/cairn-bench}/crates
mkdir -p "$cache"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/src"
trees=()
for v in $vers; do
  f="$cache/$pkg-$v.crate"
  [ -s "$f" ] || curl -sfL -o "$f" "https://static.crates.io/crates/$pkg/$pkg-$v.crate"
  tar -xzf "$f" -C "$work/src"
  trees+=("$work/src/$pkg-$v")
done
cargo build -q --release -p cairn-castore --example import_tree
target/release/examples/import_tree "$work/data" "${trees[@]}" >/dev/null
nar1=$(nix-store --dump "${trees[0]}" | wc -c)
before=$(du -sb "$work/data" | cut -f1)
# Then compact the index (redb compaction; an explicit maintenance step).
CAIRN_COMPACT=1 target/release/examples/import_tree "$work/data"
store=$(du -sb "$work/data" | cut -f1)
xz8=0
for t in "${trees[@]}"; do xz8=$((xz8 + $(nix-store --dump "$t" | xz -6 | wc -c))); done
echo "package: $pkg, releases: $vers"
echo "one release's NAR (nix-store --dump ${pkg}-${vers%% *}): $nar1 bytes"
echo "embedded data dir after importing all 8 (du -sb): $before bytes; after compacting the index: $store bytes"
du -sb "$work/data/index.redb" "$work/data/packs" | sed "s|$work/data/|  |"
echo "8 NARs, each xz -6: $xz8 bytes"
awk -v b="$before" -v s="$store" -v n="$nar1" -v x="$xz8" 'BEGIN { printf "ratio data dir / one NAR: %.3fx compacted, %.3fx before   (8 xz NARs / one NAR: %.3fx)\n", s/n, b/n, x/n }'
