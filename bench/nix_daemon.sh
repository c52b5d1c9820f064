#!/usr/bin/env bash
# The Nix daemon protocol with the real Nix, on loopback: `nix copy --from` one
# daemon's store into a fresh chroot store, of
#   - N small paths (content-addressed, one small file each), and
#   - one BIG_MIB MiB path (a random file),
# through
#   - unix://SOCK?root=ROOT (metadata over the protocol; contents from
#     ROOT/nix/store, which the daemon mounts itself with --nix-mount: Nix's
#     unix:// client reads them from its root, not with NarFromPath),
#   - unix-mnt: the same with the store mounted by a separate `cairn mount`
#     process instead (through the daemon's gRPC),
#   - ssh-ng://localhost (cairn nix-daemon --stdio as the remote program: the
#     NAR over the protocol, NarFromPath),
#   - http:// of the same daemon (the binary cache), and
#   - a file:// cache holding the same paths (compression=none), and
#   - local: the store the paths were made in (a chroot store on disk, warm),
#     for what Nix itself costs reading a store's files: unix:// and local
#     both have Nix walk files and serialise the NAR, which takes it more
#     CPU than reading a NAR from a file:// cache.
# Every round reads the mounts cold: the kernel's cache of the mounted files is
# dropped first (each copy is a first read, as in practice), the other sources
# stay as warm as the daemon's store (its packs were just written).
# Prints seconds each round, and the medians over the rounds with the ratios to
# http:// and to file:// (lower is faster).
# Targets (issue 21): unix:// at least as fast as http://, within 1.5x of file://.
# The machine's load average is printed with each block: on a shared machine
# compare the ratios of one run, not numbers across runs.
# Usage: bench/nix_daemon.sh   (N=1000 BIG_MIB=1024 ROUNDS=5 to change; CAIRN=path
#   to use a built binary instead of building a release one)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-1000}; BIG_MIB=${BIG_MIB:-1024}; ROUNDS=${ROUNDS:-5}
W=$(mktemp -d /tmp/cairn-nixd-bench.XXXXXX)
PID=; MPID=
cleanup() {
  umount -l "$W/root/nix/store" 2>/dev/null || true
  umount -l "$W/mnt/nix/store" 2>/dev/null || true
  [ -n "$MPID" ] && kill "$MPID" 2>/dev/null || true
  [ -n "$PID" ] && kill "$PID" 2>/dev/null || true
  sleep 0.5
  rm -rf "$W"
}
trap cleanup EXIT
load() { uptime | sed 's/.*load average: /load /'; }
export XDG_CACHE_HOME=$W/xdg
export NIX_CONFIG="experimental-features = nix-command
sandbox = false
substituters =
narinfo-cache-negative-ttl = 0
narinfo-cache-positive-ttl = 0"

if [ -z "${CAIRN:-}" ]; then
  cargo build --release --locked -p cairn --bin cairn >&2
  CAIRN=$PWD/target/release/cairn
fi

echo "inputs: $N small paths, one $BIG_MIB MiB path" >&2
S=$W/src-store
SMALL=()
for i in $(seq "$N"); do
  echo "small path $i $RANDOM" > "$W/p$i"
  SMALL+=("$(nix-store --store "$S" --add "$W/p$i")")
done
head -c $((BIG_MIB << 20)) /dev/urandom > "$W/big"
BIG=$(nix-store --store "$S" --add "$W/big")
rm -f "$W"/p* "$W/big"

# The daemon's store gets the paths over its own socket; the file:// cache from
# Nix directly.
mkdir -p "$W/root/nix/store" "$W/mnt/nix/store"
"$CAIRN" daemon --data-dir "$W/data" --listen 127.0.0.1:0 --http-listen 127.0.0.1:0 \
  --nix-socket "$W/nix.sock" --nix-mount "$W/root/nix/store" 2> "$W/daemon.log" & PID=$!
for _ in $(seq 100); do grep -q serving "$W/daemon.log" 2>/dev/null && break; sleep 0.1; done
HTTP=$(grep -o 'binary cache on http://127.0.0.1:[0-9]*' "$W/daemon.log" | sed 's/binary cache on //')
nix copy --from "$S" --to "unix://$W/nix.sock" "${SMALL[@]}" "$BIG" 2> /dev/null
nix copy --from "$S" --to "file://$W/cache?compression=none" "${SMALL[@]}" "$BIG" 2> /dev/null
"$CAIRN" mount --data-dir "$W/data" "$W/mnt/nix/store" 2> "$W/mount.log" & MPID=$!
for _ in $(seq 100); do grep -q mounted "$W/mount.log" 2>/dev/null && break; sleep 0.1; done
printf '#!/bin/sh\nexec %s nix-daemon --trusted --data-dir %s "$@"\n' "$CAIRN" "$W/data" > "$W/remote"
chmod +x "$W/remote"

# Seconds a command takes; a failing command stops the benchmark with its output.
secs() {
  local t0 t1
  t0=$(date +%s.%N)
  "$@" > "$W/out" 2>&1 || { echo "failed: $*" >&2; cat "$W/out" >&2; exit 1; }
  t1=$(date +%s.%N)
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }'
}
declare -A FROM=(
  [unix]="unix://$W/nix.sock?root=$W/root"
  [unix-mnt]="unix://$W/nix.sock?root=$W/mnt"
  [ssh-ng]="ssh-ng://localhost?remote-program=$W/remote"
  [http]="$HTTP"
  [file]="file://$W/cache"
  [local]="$S"
)
# Drops the kernel's cache of the paths' files on the mount at root $1 (dd's
# nocache: posix_fadvise DONTNEED), so that the next copy reads them through
# cairn.
cold() {
  local root=$1 p dirs=(); shift
  for p in "$@"; do dirs+=("$root$p"); done
  find "${dirs[@]}" -type f -exec sh -c 'for f; do dd if="$f" iflag=nocache count=0 status=none; done' sh {} +
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
run() {
  local what=$1; shift
  echo "== nix copy --from ... of $what ($(load))"
  declare -A ALL=()
  for round in $(seq "$ROUNDS"); do
    declare -A T=()
    for k in unix unix-mnt ssh-ng http file local; do
      rm -rf "$W/dst"
      case $k in unix) cold "$W/root" "$@" ;; unix-mnt) cold "$W/mnt" "$@" ;; esac
      # The setup's and the previous copy's writes flushed first: without it
      # the first copy of round 1 paid for writing back the setup's ~2 GiB.
      sync
      T[$k]=$(secs nix copy --no-check-sigs --from "${FROM[$k]}" --to "$W/dst" "$@")
      ALL[$k]="${ALL[$k]:-} ${T[$k]}"
      # Every path arrived, whole.
      nix store verify --store "$W/dst" --no-trust "$@" > /dev/null 2>&1 \
        || { echo "$k: the copy does not verify" >&2; exit 1; }
    done
    printf 'round %d: unix %.2f s  unix-mnt %.2f s  ssh-ng %.2f s  http %.2f s  file %.2f s  local %.2f s\n' \
      "$round" "${T[unix]}" "${T[unix-mnt]}" "${T[ssh-ng]}" "${T[http]}" "${T[file]}" "${T[local]}"
  done
  declare -A M=()
  for k in unix unix-mnt ssh-ng http file local; do
    M[$k]=$(printf '%s\n' ${ALL[$k]} | median)
  done
  ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
  printf 'median of %d: unix %.2f s  unix-mnt %.2f s  ssh-ng %.2f s  http %.2f s  file %.2f s  local %.2f s\n' \
    "$ROUNDS" "${M[unix]}" "${M[unix-mnt]}" "${M[ssh-ng]}" "${M[http]}" "${M[file]}" "${M[local]}"
  printf 'ratios: unix/http %s  unix/file %s  unix-mnt/http %s  ssh-ng/http %s  unix/local %s  local/file %s\n' \
    "$(ratio "${M[unix]}" "${M[http]}")" "$(ratio "${M[unix]}" "${M[file]}")" \
    "$(ratio "${M[unix-mnt]}" "${M[http]}")" "$(ratio "${M[ssh-ng]}" "${M[http]}")" \
    "$(ratio "${M[unix]}" "${M[local]}")" "$(ratio "${M[local]}" "${M[file]}")"
}
[ "$N" -gt 0 ] && run "$N small paths" "${SMALL[@]}"
run "one $BIG_MIB MiB path" "$BIG"
