#!/usr/bin/env bash
# Pull-through (issue 19), on loopback, with the real Nix writing the upstream:
# a BIG_MIB random file added to a chroot store, `nix copy --to
# file://UP?secret-key=…` (COMPRESSION, default xz as Nix writes), served by a
# static HTTP server (python3 -m http.server). Then, in one run:
#  1. direct: the NAR from the upstream server, decompressed (curl | xz -d), vs
#     the first fetch through `cairn daemon --upstream` (download, decompress,
#     ingest, hash and stream to the client at once), a fresh daemon each of
#     ROUNDS rounds, interleaved; medians. Target: <= 1.3x.
#  2. second fetch through that daemon (from its store) vs the same NAR from a
#     daemon without upstreams that got the path by `cairn copy --from`
#     (the embedded store's own serving), interleaved; medians. Target: equal
#     within noise.
#  3. 16 concurrent first fetches of the path through a fresh daemon:
#     upstream NAR downloads counted from the server's log, each client's NAR
#     compared with `nix-store --dump`; the script fails unless exactly 1
#     download and 16 identical NARs.
#  4. storage of 8 source snapshots (see below) vs the upstream's xz cache.
# The machine's load average is printed: compare ratios from one run.
# Usage: bench/pull.sh   (CAIRN=path/to/cairn to skip the build; BIG_MIB=256 COMPRESSION=xz ROUNDS=3 STEP=10 to change;
# SKIP_STORAGE=1 stops after 3)
set -euo pipefail
cd "$(dirname "$0")/.."
BIG_MIB=${BIG_MIB:-256}; COMPRESSION=${COMPRESSION:-xz}
W=$(mktemp -d)
PIDS=()
trap 'for p in "${PIDS[@]}" $(cat "$W"/*.pid 2>/dev/null); do kill "$p" 2>/dev/null || true; done; rm -rf "$W"' EXIT
load() { uptime | sed 's/.*load average: /load /'; }
export XDG_CACHE_HOME=$W/xdg
export NIX_CONFIG="experimental-features = nix-command
sandbox = false
substituters ="
if [ -n "${CAIRN:-}" ]; then cairn=$CAIRN; else
  cargo build -q --release -p cairn
  cairn=$PWD/target/release/cairn
fi

head -c $((BIG_MIB << 20)) /dev/urandom > "$W/big.bin"
big=$(nix-store --store "$W/store" --add "$W/big.bin")
nix key generate-secret --key-name up-1 > "$W/up.sk"
pk=$(nix key convert-secret-to-public < "$W/up.sk")
t0=$(date +%s.%N)
nix copy --store "$W/store" --to "file://$W/up?compression=$COMPRESSION&secret-key=$W/up.sk" "$big"
echo "upstream written ($COMPRESSION) in $(echo "$(date +%s.%N) - $t0" | bc) s: $(du -sh "$W/up" | cut -f1)"
hash=$(basename "$big" | cut -c1-32)
narurl=$(sed -n 's/^URL: //p' "$W/up/$hash.narinfo")
narhash=$(sed -n 's/^NarHash: sha256://p' "$W/up/$hash.narinfo")

(cd "$W/up" && exec python3 -m http.server --bind 127.0.0.1 0 > "$W/http.log" 2>&1) &
PIDS+=($!)
for _ in $(seq 50); do grep -q "Serving HTTP" "$W/http.log" 2>/dev/null && break; sleep 0.1; done
up=http://127.0.0.1:$(sed -n 's/.*port \([0-9]*\).*/\1/p' "$W/http.log" | head -1)

daemon() { # data dir, extra flags...; prints the binary cache URL
  local dir=$1; shift
  # Its stdout not the caller's $(…), which would wait for it to close.
  RUST_LOG=${RUST_LOG:-warn,cairn_upstream=info} "$cairn" daemon --listen 127.0.0.1:0 --http-listen 127.0.0.1:0 --data-dir "$dir" "$@" > /dev/null 2> "$dir.log" &
  echo $! > "$dir.pid"
  for _ in $(seq 100); do grep -q serving "$dir.log" 2>/dev/null && break; sleep 0.1; done
  sed -n 's/.*binary cache on \(http:\/\/[0-9.:]*\).*/\1/p' "$dir.log" | head -1
}
secs() { local t0; t0=$(date +%s.%N); "$@" > /dev/null; echo "$(date +%s.%N) - $t0" | bc; }
decomp() { case $COMPRESSION in xz) xz -dc ;; zstd) zstd -dc ;; bzip2) bzip2 -dc ;; none) cat ;; esac; }
direct_fetch() { curl -sSf "$up/$narurl" | decomp | wc -c; }
fetch() { curl -sSf "$1/nar/$hash-$narhash.nar" | wc -c; }

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ROUNDS=${ROUNDS:-3}
echo "== $BIG_MIB MiB path, $ROUNDS rounds, $(load)"
# 1. Each round: the direct fetch, then a fresh daemon's first fetch, in turn.
directs=(); firsts=(); daemons=(); registered=()
for r in $(seq "$ROUNDS"); do
  # The previous round's store writes flushed first: each measurement starts
  # without another's writeback.
  sync
  directs+=("$(secs direct_fetch)")
  a=$(daemon "$W/a$r" --upstream "$up" --upstream-trusted-key "$pk")
  curl -sSf "$a/$hash.narinfo" > /dev/null
  sync
  firsts+=("$(secs fetch "$a")")
  daemons+=("$a")
  # The store may finish after the client: the next round starts once the
  # path is registered (the daemon logs "pulled" with the ms it took).
  for _ in $(seq 600); do grep -q pulled "$W/a$r.log" && break; sleep 0.05; done
  registered+=("$(sed -n 's/.*pulled.*ms=\([0-9]*\).*/\1/p' "$W/a$r.log" | head -1)")
done
direct=$(printf '%s\n' "${directs[@]}" | median); first=$(printf '%s\n' "${firsts[@]}" | median)
# 2. The pulled path served from the pulling daemon's store vs from a daemon
#    without upstreams whose store got it by `cairn copy --from`, in turn.
mkdir -p "$W/b"
CAIRN_DATA_DIR=$W/b "$cairn" copy --from "file://$W/up" --trusted-key "$pk" "$big" 2>/dev/null
b=$(daemon "$W/b")
a=${daemons[0]}
seconds=(); owns=()
for _ in $(seq $((ROUNDS + 2))); do
  seconds+=("$(secs fetch "$a")")
  owns+=("$(secs fetch "$b")")
done
second=$(printf '%s\n' "${seconds[@]}" | median); own=$(printf '%s\n' "${owns[@]}" | median)
echo "   direct: ${directs[*]}; first through cairn: ${firsts[*]}; registered after (ms): ${registered[*]}"
echo "   second through cairn: ${seconds[*]}; embedded store alone: ${owns[*]}"
printf '1. direct %.2f s, first through cairn %.2f s (medians): ratio %.2f (target <= 1.3)\n' "$direct" "$first" "$(echo "$first / $direct" | bc -l)"
printf '2. second through cairn %.2f s, embedded store alone %.2f s (medians): ratio %.2f (target ~1.0)\n' "$second" "$own" "$(echo "$second / $own" | bc -l)"
for r in $(seq "$ROUNDS"); do kill "$(cat "$W/a$r.pid")" 2>/dev/null || true; done

# 3. 16 clients at once, each NAR's SHA-256 compared with Nix's own dump.
want=$(nix-store --dump "$W/store$big" | sha256sum | cut -d' ' -f1)
c=$(daemon "$W/c" --upstream "$up" --upstream-trusted-key "$pk")
curl -sSf "$c/$hash.narinfo" > /dev/null
before=$(grep -c "GET /$narurl " "$W/http.log" || true)
t0=$(date +%s.%N)
clients=()
for i in $(seq 16); do
  (curl -sSf "$c/nar/$hash-$narhash.nar" | sha256sum | cut -d' ' -f1 > "$W/sum.$i") &
  clients+=($!)
done
for p in "${clients[@]}"; do wait "$p"; done
took=$(echo "$(date +%s.%N) - $t0" | bc)
after=$(grep -c "GET /$narurl " "$W/http.log" || true)
same=$(cat "$W"/sum.* | grep -cx "$want" || true)
printf '3. 16 concurrent first fetches: %.2f s, upstream NAR downloads: %d, NARs identical to nix-store --dump: %d of 16; %s\n' "$took" "$((after - before))" "$same" "$(load)"
if [ "$((after - before))" -ne 1 ] || [ "$same" -ne 16 ]; then
  echo "FAILED: expected exactly 1 upstream download and 16 identical NARs" >&2
  exit 1
fi

[ -n "${SKIP_STORAGE:-}" ] && exit 0
# 4. Storage: 8 snapshots of a real source tree (this repository, every
#    STEP-th commit back from HEAD), added to the chroot store, written to an
#    xz upstream as Nix does, then pulled into a fresh cairn (`cairn copy
#    --from`): the upstream's size vs cairn's data directory.
STEP=${STEP:-10}
mkdir -p "$W/src" "$W/up2"
paths=()
for c in $(git log --format=%H | sed -n "1~${STEP}p" | head -8); do
  mkdir -p "$W/src/$c/tree" && git archive "$c" | tar -x -C "$W/src/$c/tree"
  paths+=("$(nix-store --store "$W/store" --add "$W/src/$c/tree")")
done
nix copy --store "$W/store" --to "file://$W/up2?compression=xz&secret-key=$W/up.sk" "${paths[@]}"
mkdir -p "$W/d"
CAIRN_DATA_DIR=$W/d "$cairn" copy --from "file://$W/up2" --trusted-key "$pk" "${paths[@]}" 2>/dev/null
src=$(du -sb "$W/src" | cut -f1); upb=$(du -sB1 "$W/up2" | cut -f1); ours=$(du -sB1 "$W/d" | cut -f1)
printf '4. 8 source snapshots (%d MiB of files): upstream xz cache %.1f MiB, cairn %.1f MiB: ratio %.2f\n' \
  $((src >> 20)) "$(echo "$upb / 1048576" | bc -l)" "$(echo "$ours / 1048576" | bc -l)" "$(echo "$ours / $upb" | bc -l)"
