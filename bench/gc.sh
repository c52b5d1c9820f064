#!/usr/bin/env bash
# Garbage collection at scale: N store paths (default 100000), each a small
# file of its own (or, with FILES=K, a directory of K small files: FILES=10
# gives 1M chunks), imported into one embedded data directory (BATCH paths per
# `cairn import`), then timed with peak RSS (/usr/bin/time):
#   1. `cairn gc --grace 0s`: marks every path, removes nothing;
#   2. `cairn gc --max-size` of half the disk in use: least recently used
#      paths removed in rounds, then the packs left mostly dead rewritten
#      (`--rewrite-below`, default 0.5);
#   3. `cairn gc --max-age 1s --grace 0s`: removes every remaining path.
# Prints the data directory's disk use (du, allocated blocks) after each step;
# pathinfo.redb does not shrink (redb keeps its free pages).
# Targets (issue 18): gc of 100k paths under 60 s, peak RSS under 256 MB.
# Usage: bench/gc.sh [N]   (BATCH=5000, FILES=1, REWRITE_BELOW=0.5: passed
# to every gc as --rewrite-below; CAIRN=path runs that cairn binary instead of
# building one: an older build, to compare before/after)
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-100000}
batch=${BATCH:-5000}
files=${FILES:-1}
rewrite=${REWRITE_BELOW:-0.5}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ -n "${CAIRN:-}" ]; then
  cairn=$(realpath "$CAIRN")
else
  cargo build -q --release -p cairn
  cairn=$PWD/target/release/cairn
fi
export CAIRN_DATA_DIR=$work/data
mkdir -p "$work/src"
for ((i = 0; i < n; i++)); do
  d=$work/src/$((i / 1000))
  [ -d "$d" ] || mkdir -p "$d"
  if ((files == 1)); then
    printf 'path %d of the gc benchmark\n%0200d\n' "$i" "$i" >"$d/f$i"
  else
    mkdir "$d/p$i"
    for ((k = 0; k < files; k++)); do
      printf 'file %d of path %d of the gc benchmark\n%0200d\n' "$k" "$i" "$i" >"$d/p$i/f$k"
    done
  fi
done
start=$(date +%s.%N)
find "$work/src" -mindepth 2 -maxdepth 2 | sort | xargs -n "$batch" "$cairn" import >"$work/paths"
echo "imported $(wc -l <"$work/paths") paths in $(echo "$(date +%s.%N) - $start" | bc) s; du $(du -s -B1 "$work/data" | cut -f1) bytes"
step() {
  local what=$1
  shift
  /usr/bin/time -f "$what: %e s, peak RSS %M KiB" "$cairn" "$@" --rewrite-below "$rewrite" >/dev/null 2>"$work/err" || {
    cat "$work/err"
    exit 1
  }
  grep -E "removed|freed|rewrote|compacted|peak RSS" "$work/err" | sed 's/^/  /'
  echo "  du $(du -s -B1 "$work/data" | cut -f1) bytes (pathinfo.redb $(du -B1 "$work/data/pathinfo.redb" | cut -f1))"
}
step "gc, nothing to remove" gc --grace 0s
# --max-size counts the packs and the index (allocated blocks), not pathinfo.redb.
half=$(($(du -s -B1 "$work/data/packs" "$work/data/index.redb" | awk '{s += $1} END {print s}') / 2))
step "gc --max-size $half (least recently used first)" gc --max-size "$half" --grace 0s
sleep 2
step "gc --max-age 1s (every remaining path)" gc --max-age 1s --grace 0s
