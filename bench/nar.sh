#!/usr/bin/env bash
# bench/nar.sh: `cairn nar dump` vs `nix-store --dump` and `cairn nar hash` vs
# `nix-hash --type sha256 --base32`, on the same trees, in the same run.
#
# Trees (generated once under $BENCH_DIR, default /tmp/cairn-bench-nar):
#   big    one 1 GiB file of random bytes
#   small  100,000 files of 512..1535 bytes in 100 directories
# Prints wall time (mean of several runs, warm page cache; hyperfine if installed,
# else a loop with `date`), throughput in MB/s of NAR bytes, the ratio Nix/cairn
# (> 1: cairn is faster), and peak RSS of each command via /usr/bin/time -v.
# Checks on the way that cairn and Nix produce the same bytes / hash.
#
# Usage: bench/nar.sh            (needs Nix: nix-store, nix-hash; apt: time, hyperfine optional)
# Env:   BENCH_DIR, RUNS (default 5), BIG_MIB (default 1024), SMALL_FILES (default 100000)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
BIG_MIB=${BIG_MIB:-1024}
SMALL_FILES=${SMALL_FILES:-100000}
DIR=${BENCH_DIR:-/tmp/cairn-bench-nar}

command -v nix-store >/dev/null || { echo "bench/nar.sh: needs Nix (apt-get install nix-bin)" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "bench/nar.sh: needs /usr/bin/time (apt-get install time)" >&2; exit 1; }

cargo build --release -p cairn >&2
CAIRN=$PWD/target/release/cairn

mkdir -p "$DIR"
if [ "$(stat -c %s "$DIR/big" 2>/dev/null || echo 0)" != $((BIG_MIB << 20)) ]; then
  echo "generating $DIR/big ($BIG_MIB MiB)" >&2
  head -c $((BIG_MIB << 20)) /dev/urandom > "$DIR/big"
fi
if [ ! -f "$DIR/small.done-$SMALL_FILES" ]; then
  echo "generating $DIR/small ($SMALL_FILES files)" >&2
  rm -rf "$DIR/small" "$DIR"/small.done-*
  python3 - "$DIR/small" "$SMALL_FILES" <<'EOF'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(42)
for d in range(100):
    os.makedirs(f"{root}/d{d:03}")
for i in range(n):
    with open(f"{root}/d{i % 100:03}/f{i:06}", "wb") as f:
        f.write(rng.randbytes(512 + rng.randrange(1024)))
EOF
  touch "$DIR/small.done-$SMALL_FILES"
fi

# mean wall seconds of "$@" with stdout to /dev/null
mean_time() {
  if command -v hyperfine >/dev/null; then
    local json
    json=$(mktemp)
    hyperfine --warmup 1 --runs "$RUNS" --style none --export-json "$json" "$*" >/dev/null 2>&1
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["results"][0]["mean"])' "$json"
    rm -f "$json"
  else
    "$@" >/dev/null # warm-up
    local start end
    start=$(date +%s.%N)
    for _ in $(seq "$RUNS"); do "$@" >/dev/null; done
    end=$(date +%s.%N)
    echo "($end - $start) / $RUNS" | bc -l
  fi
}

peak_rss_kb() {
  /usr/bin/time -v "$@" 2>&1 >/dev/null | awk -F: '/Maximum resident set size/ {gsub(/ /,"",$2); print $2}'
}

printf '%-7s %-5s %10s %10s %10s %10s %7s %11s %11s\n' tree op nar_MB cairn_s nix_s cairn_MB/s nix/cairn cairn_rssKB nix_rssKB
for tree in big small; do
  p="$DIR/$tree"
  nar_bytes=$("$CAIRN" nar dump "$p" | wc -c)
  # Same output as Nix, or the numbers mean nothing.
  cmp <("$CAIRN" nar dump "$p") <(nix-store --dump "$p") || { echo "dump of $tree differs from nix-store --dump" >&2; exit 1; }
  [ "$("$CAIRN" nar hash "$p")" = "$(nix-hash --type sha256 --base32 "$p")" ] || { echo "hash of $tree differs from nix-hash" >&2; exit 1; }
  for op in dump hash; do
    if [ $op = dump ]; then
      ours=("$CAIRN" nar dump "$p"); theirs=(nix-store --dump "$p")
    else
      ours=("$CAIRN" nar hash "$p"); theirs=(nix-hash --type sha256 --base32 "$p")
    fi
    t_ours=$(mean_time "${ours[@]}")
    t_theirs=$(mean_time "${theirs[@]}")
    rss_ours=$(peak_rss_kb "${ours[@]}")
    rss_theirs=$(peak_rss_kb "${theirs[@]}")
    python3 - "$tree" "$op" "$nar_bytes" "$t_ours" "$t_theirs" "$rss_ours" "$rss_theirs" <<'EOF'
import sys
tree, op, n, to, tt, ro, rt = sys.argv[1:]
n, to, tt = int(n), float(to), float(tt)
print(f"{tree:7} {op:5} {n/1e6:10.1f} {to:10.3f} {tt:10.3f} {n/1e6/to:10.0f} {tt/to:7.2f}x {ro:>11} {rt:>11}")
EOF
  done
done
