#!/usr/bin/env bash
# bench/mount.sh: reading through `cairn mount` against reading the same files
# from the local disk, on this machine, in one run (issue 20's numbers; compare
# the ratios, not the seconds):
#  1. sequential read (`cat`) of one BIG_MIB MiB random file;
#  2. `tar cf - .` (piped, so tar reads every file) of a real source tree: the
#     crates under ~/.cargo/registry/src (tens of thousands of small files), or
#     TREE=dir;
#  each page cache cold (`echo 3 > /proc/sys/vm/drop_caches`: the mount's pages,
#  dentries and inodes and the embedded store's pack pages alike) and warm (the
#  same read again). Targets: sequential >= 1 GB/s warm, the tree within 3x of
#  the local disk warm.
#  3. Peak RSS of `cairn mount` (VmHWM) after all of it, target < 128 MB.
#  4. Many readers at once, each reading a little: MANY files of MANY_MIB MiB
#     (random, so many chunks each), `dd bs=128k count=8` of every file at once
#     from its start, then again 12.5 MiB in, then `cat` of them all; its time
#     against the local disk (page cache warm), and the mount's peak RSS after
#     it (target < 128 MB: what the mount holds is bounded by its read budget,
#     not by the number of files read).
# Needs root (drop_caches; the mount syscall) and /dev/fuse.
# Usage: bench/mount.sh   (BIG_MIB=256 TREE=dir MANY=20 MANY_MIB=32 to change;
#   CAIRN=path to use a built binary instead of building one)
set -euo pipefail
cd "$(dirname "$0")/.."
BIG_MIB=${BIG_MIB:-1024}
MANY=${MANY:-20}
MANY_MIB=${MANY_MIB:-32}
TREE=${TREE:-$HOME/.cargo/registry/src}
[ "$(id -u)" = 0 ] || { echo "bench/mount.sh needs root (drop_caches)" >&2; exit 1; }
[ -d "$TREE" ] || { echo "no source tree at $TREE: set TREE=dir" >&2; exit 1; }
W=$(mktemp -d /tmp/cairn-mount-bench.XXXXXX)
MNT=$W/mnt
PID=
cleanup() {
  umount -l "$MNT" 2>/dev/null || true
  [ -n "$PID" ] && kill "$PID" 2>/dev/null || true
  sleep 0.5
  rm -rf "$W"
}
trap cleanup EXIT

if [ -z "${CAIRN:-}" ]; then
  cargo build --release --locked -p cairn --bin cairn >&2
  CAIRN=$PWD/target/release/cairn
fi

echo "inputs: a $BIG_MIB MiB random file; a copy of $TREE; $MANY random files of $MANY_MIB MiB" >&2
head -c $((BIG_MIB << 20)) /dev/urandom >"$W/big"
cp -a "$TREE" "$W/tree"
FILES=$(find "$W/tree" -type f | wc -l)
TREE_MB=$(du -sm --apparent-size "$W/tree" | cut -f1)
mkdir "$W/many"
for i in $(seq "$MANY"); do head -c $((MANY_MIB << 20)) /dev/urandom >"$W/many/f$i"; done
mapfile -t P < <("$CAIRN" import --data-dir "$W/data" "$W/big" "$W/tree" "$W/many")
BIG_P=$(basename "${P[0]}")
TREE_P=$(basename "${P[1]}")
MANY_P=$(basename "${P[2]}")

mkdir "$MNT"
"$CAIRN" mount --data-dir "$W/data" "$MNT" 2>"$W/mount.log" &
PID=$!
for _ in $(seq 200); do grep -q '^mounted' "$W/mount.log" && break; sleep 0.05; done
grep -q '^mounted' "$W/mount.log" || { cat "$W/mount.log" >&2; exit 1; }

cold() { sync; echo 3 >/proc/sys/vm/drop_caches; }
# Seconds taken by "$@", its output discarded.
secs() {
  local s e
  s=$(date +%s.%N)
  "$@" >/dev/null
  e=$(date +%s.%N)
  echo "$e - $s" | bc -l
}
# Piped, not to /dev/null: GNU tar skips reading files when writing there.
tar_tree() { tar cf - -C "$1" . | cat; }
# 1 MiB of each file in $1 at once at offset $2 (in 128 KiB blocks).
dd_all() {
  local f pids=()
  for f in "$1"/f*; do
    dd if="$f" of=/dev/null bs=128k skip="$2" count=8 2>/dev/null &
    pids+=($!)
  done
  wait "${pids[@]}"
}
many_readers() { dd_all "$1" 0; dd_all "$1" 100; cat "$1"/f* >/dev/null; }

declare -A T
for where in local mount; do
  if [ $where = local ]; then big=$W/big; tree=$W/tree; else big=$MNT/$BIG_P; tree=$MNT/$TREE_P; fi
  cold; T[$where-seq-cold]=$(secs cat "$big")
  T[$where-seq-warm]=$(secs cat "$big")
  cold; T[$where-tar-cold]=$(secs tar_tree "$tree")
  T[$where-tar-warm]=$(secs tar_tree "$tree")
done
hwm() { awk '/VmHWM/ {print int($2/1024)}' /proc/$PID/status; }
RSS=$(hwm)
# Last, so that the peak before it is seen apart. Warm: the local files, and
# for the mount the store's packs, are in the page cache; the mount's own pages
# are not (else the kernel would answer every read without asking cairn).
for where in local mount; do
  if [ $where = local ]; then
    many=$W/many
    cat "$many"/f* >/dev/null
  else
    many=$MNT/$MANY_P
    echo 1 >/proc/sys/vm/drop_caches
    cat "$W"/data/packs/* >/dev/null
  fi
  T[$where-many]=$(secs many_readers "$many")
done
RSS_MANY=$(hwm)

printf '\n%-34s %10s %10s %12s\n' "" "local" "mount" "mount/local"
for k in seq-cold seq-warm tar-cold tar-warm many; do
  l=${T[local-$k]}; m=${T[mount-$k]}
  printf '%-34s %9.3fs %9.3fs %11.2fx\n' "$k" "$l" "$m" "$(echo "$m / $l" | bc -l)"
done
for k in seq-cold seq-warm; do
  printf '%-34s %9.0f  %9.0f   MB/s\n' "$k ($BIG_MIB MiB)" \
    "$(echo "$BIG_MIB * 1.048576 / ${T[local-$k]}" | bc -l)" \
    "$(echo "$BIG_MIB * 1.048576 / ${T[mount-$k]}" | bc -l)"
done
echo "tree: $FILES files, $TREE_MB MB"
echo "many: $MANY files of $MANY_MIB MiB: dd of 1 MiB of each at once at 0 and at 12.5 MiB, then cat of all"
echo "cairn mount peak RSS (VmHWM): $RSS MB after seq and tar; $RSS_MANY MB after many"
kill -TERM "$PID"
wait "$PID"
PID=
grep -q " $MNT " /proc/mounts && { echo "stale mount after SIGTERM" >&2; exit 1; }
echo "unmounted cleanly on SIGTERM"
