#!/usr/bin/env bash
# bench/store.sh: `cairn import` vs `nix-store --add` (into a chroot store) and
# `cairn dump` vs `nix-store --dump`, on the same trees, in the same run.
#
# Trees (generated once under $BENCH_DIR, default /tmp/cairn-bench-nar, shared with
# bench/nar.sh):
#   big    one 1 GiB file of random bytes
#   small  100,000 files of 512..1535 random bytes in 100 directories
# Each import goes into an empty store (a fresh data directory for cairn, a fresh
# chroot store for Nix, both on the same file system), so both store everything;
# `reimport` is cairn importing the same tree again into the store that has it.
# Dump: `cairn dump STORE_PATH` renders from the embedded store; `nix-store --dump`
# reads the tree from the file system. Wall time is the mean of $RUNS runs (warm page
# cache; hyperfine if installed, else a loop), ratio = nix/cairn (> 1: cairn is
# faster), peak RSS from /usr/bin/time -v.
#
# Usage: bench/store.sh   (needs Nix: nix-store; /usr/bin/time; hyperfine optional)
# Env:   BENCH_DIR, RUNS (default 3), BIG_MIB (default 1024), SMALL_FILES (default 100000),
#        WORK (scratch directory for the stores, default $BENCH_DIR/stores)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
BIG_MIB=${BIG_MIB:-1024}
SMALL_FILES=${SMALL_FILES:-100000}
DIR=${BENCH_DIR:-/tmp/cairn-bench-nar}
WORK=${WORK:-$DIR/stores}

command -v nix-store >/dev/null || { echo "bench/store.sh: needs Nix (apt-get install nix-bin)" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "bench/store.sh: needs /usr/bin/time (apt-get install time)" >&2; exit 1; }

cargo build --release -p cairn >&2
CAIRN=$PWD/target/release/cairn
export XDG_CACHE_HOME=$(mktemp -d)
export NIX_CONFIG='experimental-features = nix-command
sandbox = false
substituters ='
unset CAIRN_STORE BLOB_SERVICE_ADDR DIRECTORY_SERVICE_ADDR PATH_INFO_SERVICE_ADDR CAIRN_DATA_DIR
trap 'rm -rf "$WORK" "$XDG_CACHE_HOME"' EXIT

mkdir -p "$DIR" "$WORK"
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

# mean wall seconds of the command in $1, with the preparation command $2 run
# before each run (untimed)
mean_time() {
  local cmd=$1 prep=${2:-true}
  if command -v hyperfine >/dev/null; then
    local json
    json=$(mktemp)
    hyperfine --runs "$RUNS" --prepare "$prep" --style none --export-json "$json" "$cmd" >/dev/null 2>&1
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["results"][0]["mean"])' "$json"
    rm -f "$json"
  else
    local total=0 start end
    for _ in $(seq "$RUNS"); do
      bash -c "$prep"
      start=$(date +%s.%N)
      bash -c "$cmd" >/dev/null
      end=$(date +%s.%N)
      total=$(echo "$total + $end - $start" | bc -l)
    done
    echo "$total / $RUNS" | bc -l
  fi
}

# peak RSS in KB of the command in $1, after running $2
peak_rss_kb() {
  bash -c "${2:-true}"
  /usr/bin/time -v bash -c "exec $1" 2>&1 >/dev/null | awk -F: '/Maximum resident set size/ {gsub(/ /,"",$2); print $2}'
}

row() { # tree op cairn_cmd nix_cmd cairn_prep nix_prep
  local c n rc rn
  c=$(mean_time "$3" "${5:-true}")
  n=$(mean_time "$4" "${6:-true}")
  rc=$(peak_rss_kb "$3" "${5:-true}")
  rn=$(peak_rss_kb "$4" "${6:-true}")
  printf '%-6s %-9s %9.2f %9.2f %9.2f %12s %12s\n' "$1" "$2" "$c" "$n" "$(echo "$n / $c" | bc -l)" "$rc" "$rn"
}

D=$WORK/cairn-data
N=$WORK/nix-chroot
printf '%-6s %-9s %9s %9s %9s %12s %12s\n' tree op cairn_s nix_s nix/cairn cairn_rssKB nix_rssKB
for tree in big small; do
  p="$DIR/$tree"
  # Same store path as Nix, or the numbers mean nothing.
  rm -rf "$D" "$N"
  ours=$("$CAIRN" import --data-dir "$D" "$p")
  theirs=$(nix-store --store "$N" --add "$p")
  [ "$ours" = "$theirs" ] || { echo "cairn import $tree gives $ours, nix-store --add $theirs" >&2; exit 1; }
  cmp <("$CAIRN" dump --data-dir "$D" "$ours") <(nix-store --dump "$p") || { echo "cairn dump of $tree differs from nix-store --dump" >&2; exit 1; }

  row "$tree" import "$CAIRN import --data-dir $D $p" "nix-store --store $N --add $p" "rm -rf $D" "rm -rf $N"
  row "$tree" reimport "$CAIRN import --data-dir $D $p" "nix-store --store $N --add $p"
  row "$tree" dump "$CAIRN dump --data-dir $D $ours" "nix-store --dump $p"
  rm -rf "$D" "$N"
done
echo "(import: into an empty store each run; reimport: the tree is stored already, Nix still hashes it; dump: cairn renders from its store, Nix reads the tree)"
