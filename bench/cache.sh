#!/usr/bin/env bash
# The HTTP binary cache, on loopback, with the real Nix:
#  1. upload: `nix copy --to http://` (cairn, embedded store) vs `nix copy --to
#     file://` of the same closure (a 256 MiB random file + 2000 small files), each
#     with compression=none and zstd; time ratio cairn/file (lower is better).
#     Also the server's CPU time during the http copy and the client's (nix:
#     user + system, from /usr/bin/time if there): the http copy is serial (Nix
#     sends one request at a time on one connection, and holds a NAR whole in
#     memory before sending it), so its wall time is about the two added, and
#     what the client spends beyond its file:// copy is Nix's own HTTP path.
#     UPLOAD_ONLY=1 stops after this part.
#  2. narinfo, over the uploaded paths' narinfos (signed on the fly with a key
#     given to the server), keep-alive, S seconds each:
#     - closed loop (each connection sends its next request when the answer to
#       the last has come) with 1 and N connections: the maximum requests/s; its
#       latency is mostly queueing behind the generator's own requests
#       (Little's law: N / throughput);
#     - open loop, as wrk2 does (one generator thread, epoll, a timerfd; GEN_THREADS
#       to change), at 25%, 50% and 75% of that maximum with N connections:
#       requests sent on a fixed schedule, latency measured from the scheduled
#       time (coordinated omission corrected): p50/p90/p99; then at fixed rates
#       ($RATES, default 13.4k/26.8k/40.2k/60k/70k req/s: the first three are
#       25/50/75% of the maximum before the narinfo fast path), comparable
#       across builds. The closed-loop maximum gains from batching pipelined
#       answers that an open loop never gets, so 75% of it can lie beyond what
#       server and generator together manage open-loop on 2 cores.
#     Target: p50 <= 100 us under load (the open-loop rates).
#     Each run also prints the server's CPU time (user + system, from /proc) per
#     request: its cost, which other processes' load changes much less than
#     latency; and the generator's (from /usr/bin/time, if there). On loopback
#     the sender pays for the receiver's TCP input and wake-up, so each side's
#     CPU includes part of the other's.
#     All of it twice: first as the processes fall on the machine's cores, then
#     (after the NAR downloads) with the server restarted pinned to one CPU and
#     the generator pinned to another (taskset; PIN=0 skips it): the pinned runs
#     measure the server rather than the sharing (their rates are again
#     25/50/75% of their own closed-loop maximum). On a machine busy with other
#     work the pinned server has one core and shares it with that work: its
#     tail is then worse than unpinned.
#  3. NAR download (identity, rendered from the store): 1 and 16 concurrent
#     clients, aggregate MB/s. Target: >= 1 GB/s aggregate.
#  4. the same in one process over memory services, with the store alone (render,
#     narinfo get+sign+format) next to it: the HTTP layer's own cost.
# The machine's load average is printed next to every number: on a shared machine
# compare ratios from one run, not numbers across runs.
# Usage: bench/cache.sh   (SECS=5 CONNS=8 BIG_MIB=256 ROUNDS=2 PIN=1 RATES="13400 26800 40200 60000 70000" GEN_THREADS=1 to change;
#   CACHE_BENCH=path runs that cache_bench binary instead of building one: an
#   older build, to compare before/after in the same minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${SECS:-5}; CONNS=${CONNS:-8}; BIG_MIB=${BIG_MIB:-256}; ROUNDS=${ROUNDS:-2}; PIN=${PIN:-1}; RATES=${RATES-"13400 26800 40200 60000 70000"}
W=$(mktemp -d)
PID=
trap '[ -n "$PID" ] && kill "$PID" 2>/dev/null; rm -rf "$W"' EXIT
load() { uptime | sed 's/.*load average: /load /'; }
export XDG_CACHE_HOME=$W/xdg
export NIX_CONFIG="experimental-features = nix-command
sandbox = false
substituters =
narinfo-cache-negative-ttl = 0
narinfo-cache-positive-ttl = 0"
if [ -n "${CACHE_BENCH:-}" ]; then
  B=$CACHE_BENCH
else
  cargo build -q --release -p cairn-cache --example cache_bench
  B=target/release/examples/cache_bench
fi
nix key generate-secret --key-name cairn-bench-1 > "$W/sign.key"

mkdir -p "$W/src/small"
head -c $((BIG_MIB << 20)) /dev/urandom > "$W/src/big"
for i in $(seq 2000); do echo "file $i $RANDOM" > "$W/src/small/f$i"; done
S=$W/store
P=$(nix-store --store "$S" --add "$W/src")
SMALL=()
for i in $(seq 200); do
  echo "path $i" > "$W/p$i"; SMALL+=("$(nix-store --store "$S" --add "$W/p$i")")
done

secs() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null 2>&1; t1=$(date +%s.%N); awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }'; }
# The client's CPU time (user+system) from /usr/bin/time, if there.
if [ -x /usr/bin/time ]; then NIXTIME=(/usr/bin/time -f '%U+%S'); else NIXTIME=(sh -c 'shift 2; exec "$@"' x); fi
echo "== upload: nix copy of a $(nix path-info --store "$S" -S "$P" | awk '{printf "%.0f MiB", $2/1048576}') path + ${#SMALL[@]} small paths"
# Each round into an empty cache and an empty file:// directory.
for comp in none zstd; do
  for round in $(seq "$ROUNDS"); do
    rm -rf "$W/data-$comp" "$W/file-$comp"
    "$B" serve "$W/data-$comp" "$W/port" "$W/sign.key" & PID=$!
    for _ in $(seq 100); do [ -s "$W/port" ] && break; sleep 0.1; done
    PORT=$(cat "$W/port"); rm -f "$W/port"
    c0=$(awk '{ print $14 + $15 }' "/proc/$PID/stat")
    th=$(secs "${NIXTIME[@]}" -o "$W/nix_http" nix copy --store "$S" --to "http://127.0.0.1:$PORT?compression=$comp" "$P" "${SMALL[@]}")
    c1=$(awk '{ print $14 + $15 }' "/proc/$PID/stat")
    tf=$(secs "${NIXTIME[@]}" -o "$W/nix_file" nix copy --store "$S" --to "file://$W/file-$comp?compression=$comp" "$P" "${SMALL[@]}")
    printf '%-5s http (cairn) %6.2f s   file:// %6.2f s   ratio %.2f   CPU: server %.2f s, nix http %s s, nix file %s s   (%s)\n' "$comp" "$th" "$tf" "$(awk -v a="$th" -v b="$tf" 'BEGIN { print a / b }')" \
      "$(awk -v t=$((c1 - c0)) -v hz="$(getconf CLK_TCK)" 'BEGIN { print t / hz }')" "$(cat "$W/nix_http" 2>/dev/null || echo "?")" "$(cat "$W/nix_file" 2>/dev/null || echo "?")" "$(load)"
    if [ "$comp" = zstd ] && [ "$round" = "$ROUNDS" ]; then break 2; fi
    kill "$PID"; wait "$PID" 2>/dev/null || true; PID=
  done
done
[ "${UPLOAD_ONLY:-0}" = 1 ] && exit 0
URL=http://127.0.0.1:$PORT
nix path-info --store "$URL" "$P" >/dev/null

HASHES=()
for p in "${SMALL[@]}"; do h=${p#/nix/store/}; HASHES+=("${h%%-*}"); done
TCK=$(getconf CLK_TCK)
server_ticks() { awk '{ print $14 + $15 }' "/proc/$PID/stat"; }
GEN=() # what runs the generator (taskset)
# Runs the generator with these arguments; prints its line, the server's and the
# generator's CPU time per request and the load; keeps the line in $out.
narinfo_run() {
  local t0 t1 n gen=""
  t0=$(server_ticks)
  if [ -x /usr/bin/time ]; then
    out=$(/usr/bin/time -f '%U %S' -o "$W/gen_time" "${GEN[@]}" "$B" "$@")
  else
    out=$("${GEN[@]}" "$B" "$@")
  fi
  t1=$(server_ticks)
  n=$(sed -E 's/.*[ (]([0-9]+) requests in.*/\1/' <<<"$out")
  [ -s "$W/gen_time" ] && gen=", generator $(awk -v n="$n" '{ printf "%.1f", ($1 + $2) / n * 1e6 }' "$W/gen_time") us"
  echo "$out; CPU per request: server $(awk -v t=$((t1 - t0)) -v hz="$TCK" -v n="$n" 'BEGIN { printf "%.1f", t / hz / n * 1e6 }') us$gen   ($(load))"
}
narinfo_all() {
  "${GEN[@]}" "$B" narinfo "$URL" 1 2 "${HASHES[@]}" >/dev/null # warm up
  narinfo_run narinfo "$URL" "$SECS" 1 "${HASHES[@]}"
  narinfo_run narinfo "$URL" "$SECS" "$CONNS" "${HASHES[@]}"
  MAX=$(sed -n 's/.*: \([0-9]*\) req\/s.*/\1/p' <<<"$out")
  for pct in 25 50 75; do
    echo -n "$pct% of $MAX req/s: "
    narinfo_run narinfo-rate "$URL" "$SECS" "$CONNS" $((MAX * pct / 100)) "${HASHES[@]}"
  done
  # Fixed rates too: the closed-loop maximum gains from batching pipelined answers
  # that an open loop never gets, so its percentages move as the server changes.
  for rate in $RATES; do
    echo -n "fixed $rate req/s: "
    narinfo_run narinfo-rate "$URL" "$SECS" "$CONNS" "$rate" "${HASHES[@]}"
  done
}
echo "== narinfo (keep-alive, ${SECS}s each, ${#SMALL[@]} paths, signed)"
narinfo_all

echo "== NAR download"
h=${P#/nix/store/}; h=${h%%-*}
NARURL=$(curl -sf "$URL/$h.narinfo" | sed -n 's/^URL: //p')
"$B" nar "$URL" "/$NARURL" 1 4; load
"$B" nar "$URL" "/$NARURL" 16 1; load

if [ "$PIN" = 1 ] && [ "$(nproc)" -ge 2 ]; then
  kill "$PID"; wait "$PID" 2>/dev/null || true
  taskset -c 0 "$B" serve "$W/data-zstd" "$W/port" "$W/sign.key" & PID=$!
  for _ in $(seq 100); do [ -s "$W/port" ] && break; sleep 0.1; done
  URL=http://127.0.0.1:$(cat "$W/port"); rm -f "$W/port"
  GEN=(taskset -c 1)
  echo "== narinfo, the server pinned to CPU 0 and the generator to CPU 1"
  narinfo_all
fi

echo "== in-process, memory services ($BIG_MIB MiB NAR): store alone vs through HTTP"
"$B" inproc "$BIG_MIB"; load
