#!/usr/bin/env bash
# bench/scaleout.sh: cairn on S3 + PostgreSQL against the embedded store, on this
# machine, in one run (issue 17's numbers; compare the ratios, not the seconds):
#  1. `cairn import` of SMALL small files (100 B to 4 KiB, in 100-file
#     directories) and of one BIG_MIB MiB random file: into the embedded store,
#     and into S3 (s3s-fs, or Garage with S3_SERVER=garage: real HTTP with
#     SigV4, on loopback) + PostgreSQL
#     (Debian's, on loopback). Each into an empty store. Ratio s3/embedded
#     (targets: <= 3 on small files, <= 1.5 on the large file).
#  2. S3 requests per imported small file, counted by the S3 server (s3s-fs: its
#     `resolved route, op: ...` debug lines), not by cairn.
#  3. NAR download through `cairn daemon` of the small-file tree's path and of
#     the large file's: from the embedded store (hot: the second download), and
#     from S3+PostgreSQL cold (a fresh daemon: nothing in its local cache) and
#     hot (the second download). Ratio hot s3 / hot embedded (target >= 0.8).
#  4. Peak RSS of each daemon (VmHWM), target < 256 MB.
# Needs what scripts/install-test-deps.sh installs (postgresql, s3s-fs).
# Usage: bench/scaleout.sh   (SMALL=100000 BIG_MIB=1024 to change;
#   CAIRN=path to use a built binary instead of building one; KEEP=1 leaves the
#   servers running and the stores in place, for profiling a daemon on them;
#   S3_SERVER=garage measures against a one-node Garage instead of s3s-fs, which
#   SHA-256s and MD5s every part and copies a multipart upload again when it is
#   completed: `cargo install garage --version 2.5.0 --no-default-features
#   --features sqlite,bundled-libs --root /opt/cairn-bench-tools` first);
#   SIGN_PAYLOAD=false sends bodies as UNSIGNED-PAYLOAD (the default over
#   https://; on this loopback http:// endpoint bodies are signed by default);
#   BIG_FILE=path imports that file (its first BIG_MIB MiB) instead of random
#   bytes, e.g. a compressible one.
set -euo pipefail
cd "$(dirname "$0")/.."
SMALL=${SMALL:-100000}
BIG_MIB=${BIG_MIB:-1024}
W=$(mktemp -d /tmp/cairn-scaleout.XXXXXX)
chmod 755 "$W"
PIDS=()
cleanup() {
  if [ -n "${KEEP:-}" ]; then
    echo "KEEP: servers and stores left in $W (flags and paths in $W/kept.sh)" >&2
    return
  fi
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.5
  rm -rf "$W"
}
trap cleanup EXIT
load() { uptime | sed 's/.*load average: /load /'; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

if [ -z "${CAIRN:-}" ]; then
  cargo build --release --locked -p cairn --bin cairn >&2
  CAIRN=$PWD/target/release/cairn
fi
S3_SERVER=${S3_SERVER:-s3s-fs}
case "$S3_SERVER" in
  s3s-fs)
    S3S=$(command -v s3s-fs || echo /opt/cairn-test-tools/bin/s3s-fs)
    [ -x "$S3S" ] || { echo "s3s-fs not found: run scripts/install-test-deps.sh" >&2; exit 1; } ;;
  garage)
    GARAGE=${GARAGE:-$(command -v garage || echo /opt/cairn-bench-tools/bin/garage)}
    [ -x "$GARAGE" ] || { echo "garage not found: cargo install garage --version 2.5.0 --no-default-features --features sqlite,bundled-libs --root /opt/cairn-bench-tools" >&2; exit 1; } ;;
  *) echo "S3_SERVER is s3s-fs or garage" >&2; exit 1 ;;
esac
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$PGBIN/postgres" ] || { echo "PostgreSQL not found: run scripts/install-test-deps.sh" >&2; exit 1; }

# PostgreSQL refuses to run as root: as the postgres user when we are root.
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
mkdir -p "$W/pg" "$W/pgsock"
[ "$(id -u)" = 0 ] && chown postgres "$W/pg" "$W/pgsock"
as_pg "$PGBIN/initdb" -D "$W/pg" -U cairn --auth=trust >/dev/null
PGPORT=$(free_port)
# Durable as a server would be (fsync on): this measures what an operator gets.
as_pg "$PGBIN/postgres" -D "$W/pg" -k "$W/pgsock" -p "$PGPORT" -c listen_addresses=127.0.0.1 \
  -c max_connections=200 >"$W/pg.log" 2>&1 &
PIDS+=($!)
S3PORT=$(free_port)
mkdir -p "$W/s3"
if [ "$S3_SERVER" = s3s-fs ]; then
  export AWS_ACCESS_KEY_ID=cairnbench AWS_SECRET_ACCESS_KEY=cairnbenchsecret
  RUST_LOG=s3s::ops=debug "$S3S" --host 127.0.0.1 --port "$S3PORT" \
    --access-key "$AWS_ACCESS_KEY_ID" --secret-key "$AWS_SECRET_ACCESS_KEY" "$W/s3" >"$W/s3.log" 2>&1 &
  S3PID=$!
  new_bucket() { mkdir -p "$W/s3/$1"; }
else
  # One Garage node; no compression of its own (cairn compresses chunks
  # already), as an operator would run it under cairn.
  RPCPORT=$(free_port)
  cat >"$W/garage.toml" <<EOF
metadata_dir = "$W/s3/meta"
data_dir = "$W/s3/data"
db_engine = "sqlite"
replication_factor = 1
compression_level = "none"
rpc_bind_addr = "127.0.0.1:$RPCPORT"
rpc_public_addr = "127.0.0.1:$RPCPORT"
rpc_secret = "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
[s3_api]
s3_region = "us-east-1"
api_bind_addr = "127.0.0.1:$S3PORT"
root_domain = ".s3.localhost"
EOF
  garage() { "$GARAGE" -c "$W/garage.toml" "$@"; }
  RUST_LOG=warn "$GARAGE" -c "$W/garage.toml" server >"$W/s3.log" 2>&1 &
  S3PID=$!
  for _ in $(seq 100); do garage status >/dev/null 2>&1 && break; sleep 0.2; done
  node=$(garage node id -q | cut -d@ -f1)
  garage layout assign -z dc1 -c 100G "$node" >/dev/null
  garage layout apply --version 1 >/dev/null
  export AWS_ACCESS_KEY_ID=GK$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
  export AWS_SECRET_ACCESS_KEY=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
  garage key import --yes -n bench "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" >/dev/null
  new_bucket() {
    garage bucket create "$1" >/dev/null
    garage bucket allow --read --write --owner "$1" --key bench >/dev/null
  }
fi
PIDS+=("$S3PID")
for _ in $(seq 100); do
  as_pg "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$PGPORT" && break
  sleep 0.1
done
# S3 requests as the server saw them (s3s-fs's debug lines; none on Garage).
s3_ops() { grep -c 'resolved route, op:' "$W/s3.log" || true; }
s3_ops_by_kind() { grep -o 'resolved route, op: [A-Za-z]*' "$W/s3.log" | awk '{print $4}' | sort | uniq -c | tr '\n' ' '; }

# One database and one bucket per store; sets
# STORE_FLAGS to the three --*-service-addr flags (not in a subshell: N counts).
N=0
new_s3_store() {
  N=$((N + 1))
  as_pg "$PGBIN/createdb" -h 127.0.0.1 -p "$PGPORT" -U cairn "bench$N"
  new_bucket "bench$N"
  local pg="postgres://cairn@127.0.0.1:$PGPORT/bench$N"
  local index
  index=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$pg")
  STORE_FLAGS="--blob-service-addr s3://bench$N/store?endpoint=http://127.0.0.1:$S3PORT&region=us-east-1&index=$index${SIGN_PAYLOAD:+&sign_payload=$SIGN_PAYLOAD} --directory-service-addr $pg --path-info-service-addr $pg"
}

echo "generating $SMALL small files and a $BIG_MIB MiB file in $W/src" >&2
python3 - "$W/src/small" "$SMALL" <<'EOF'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(17)
for i in range(n):
    d = os.path.join(root, f"d{i // 100:05}")
    if i % 100 == 0:
        os.makedirs(d)
    with open(os.path.join(d, f"f{i % 100:03}"), "wb") as f:
        f.write(rng.randbytes(rng.randint(100, 4096)))
EOF
mkdir -p "$W/src/big"
head -c "$((BIG_MIB << 20))" "${BIG_FILE:-/dev/urandom}" >"$W/src/big/file"
[ "$(stat -c %s "$W/src/big/file")" -eq "$((BIG_MIB << 20))" ] || { echo "BIG_FILE is shorter than $BIG_MIB MiB" >&2; exit 1; }

timed() { # seconds the command takes; its CPU seconds (user + system) in $W/cpu
  local start end
  start=$(date +%s.%N)
  TIMEFORMAT='%U %S'
  { time "$@" >"$W/out" 2>"$W/err" || { cat "$W/err" >&2; exit 1; }; } 2>"$W/time"
  end=$(date +%s.%N)
  awk '{printf "%.2f", $1 + $2}' "$W/time" >"$W/cpu"
  echo "$end - $start" | bc -l
}
# CPU seconds (user + system) used so far by a process, or by PostgreSQL's
# postmaster and its backends (the servers share this machine's cores with
# cairn, so where the time of an import goes is part of its number).
cpu_of() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$1/stat" 2>/dev/null || echo 0; }
pg_cpu() {
  local pm total=0 p
  pm=$(head -1 "$W/pg/postmaster.pid")
  # The postmaster's own time and that of its children it reaped (the
  # backends of connections closed since), then the live backends'.
  total=$(awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15 + $16 + $17) / hz}' "/proc/$pm/stat")
  for p in $(pgrep -P "$pm"); do total=$(echo "$total + $(cpu_of "$p")" | bc -l); done
  echo "$total"
}

printf '%-6s %-28s %10s %10s %8s  %s\n' tree measure embedded s3+pg ratio load
declare -A PATHS_EMB PATHS_S3 FLAGS
for tree in small big; do
  rm -rf "$W/emb-$tree"
  te=$(timed "$CAIRN" import --data-dir "$W/emb-$tree" "$W/src/$tree")
  PATHS_EMB[$tree]=$(cat "$W/out")
  new_s3_store
  FLAGS[$tree]=$STORE_FLAGS
  cpu_emb=$(cat "$W/cpu")
  before=$(s3_ops)
  s3_cpu0=$(cpu_of "$S3PID")
  pg_cpu0=$(pg_cpu)
  # shellcheck disable=SC2086
  ts=$(timed "$CAIRN" import --data-dir "$W/cli-$tree" ${FLAGS[$tree]} "$W/src/$tree")
  PATHS_S3[$tree]=$(cat "$W/out")
  after=$(s3_ops)
  cpu_s3=$(cat "$W/cpu")
  s3_cpu=$(echo "$(cpu_of "$S3PID") - $s3_cpu0" | bc -l)
  pg_cpu1=$(echo "$(pg_cpu) - $pg_cpu0" | bc -l)
  [ "${PATHS_EMB[$tree]}" = "${PATHS_S3[$tree]}" ] || { echo "store paths differ: ${PATHS_EMB[$tree]} vs ${PATHS_S3[$tree]}" >&2; exit 1; }
  printf '%-6s %-28s %10.2f %10.2f %8.2f  %s\n' "$tree" "import (s)" "$te" "$ts" "$(echo "$ts / $te" | bc -l)" "$(load)"
  printf '%-6s %-28s %10s %10s %8s  (S3 server %.2f s, PostgreSQL %.2f s)\n' "$tree" "import CPU, cairn (s)" "$cpu_emb" "$cpu_s3" - "$s3_cpu" "$pg_cpu1"
  if [ "$tree" = small ] && [ "$S3_SERVER" = s3s-fs ]; then
    printf '%-6s %-28s %10s %10.4f %8s  (%s requests: %s)\n' small "S3 requests per file" - \
      "$(echo "($after - $before) / $SMALL" | bc -l)" - "$((after - before))" "$(s3_ops_by_kind)"
  fi
done

start_daemon() { # data-dir, then flags; sets DPID and DURL
  local data=$1 log
  shift
  log="$W/daemon.$RANDOM.log"
  # shellcheck disable=SC2068
  "$CAIRN" daemon --data-dir "$data" --listen 127.0.0.1:0 --http-listen 127.0.0.1:0 --no-socket $@ \
    2>"$log" >/dev/null &
  DPID=$!
  PIDS+=("$DPID")
  for _ in $(seq 300); do
    grep -q 'serving' "$log" 2>/dev/null && break
    kill -0 "$DPID" 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.1
  done
  DURL=$(grep -o 'binary cache on http://[0-9.:]*' "$log" | head -1 | sed 's/binary cache on //')
}
stop_daemon() { kill "$1"; wait "$1" 2>/dev/null || true; }
nar_url() { # cache URL, store path
  local h
  h=$(basename "$2" | cut -c1-32)
  echo "$1/$(curl -sf "$1/$h.narinfo" | sed -n 's/^URL: //p')"
}
mbps() { # MB/s of downloading URL
  curl -sf -o /dev/null -w '%{size_download} %{time_total}\n' "$1" | awk '{printf "%.1f", $1 / $2 / 1e6}'
}
hwm_mb() { awk '/VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"; }

if [ -n "${KEEP:-}" ]; then
  for tree in small big; do
    printf 'FLAGS_%s=%q\nPATH_EMB_%s=%q\nPATH_S3_%s=%q\n' "$tree" "${FLAGS[$tree]}" \
      "$tree" "${PATHS_EMB[$tree]}" "$tree" "${PATHS_S3[$tree]}" >>"$W/kept.sh"
  done
  printf 'export AWS_ACCESS_KEY_ID=%q AWS_SECRET_ACCESS_KEY=%q\n' "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" >>"$W/kept.sh"
fi
for tree in small big; do
  start_daemon "$W/emb-$tree"
  u=$(nar_url "$DURL" "${PATHS_EMB[$tree]}")
  mbps "$u" >/dev/null
  emb_hot=$(mbps "$u")
  emb_rss=$(hwm_mb "$DPID")
  stop_daemon "$DPID"
  # shellcheck disable=SC2086
  start_daemon "$W/daemon-$tree" ${FLAGS[$tree]}
  u=$(nar_url "$DURL" "${PATHS_S3[$tree]}")
  s3_cold=$(mbps "$u")
  s3_hot=$(mbps "$u")
  s3_rss=$(hwm_mb "$DPID")
  stop_daemon "$DPID"
  printf '%-6s %-28s %10s %10s %8s  %s\n' "$tree" "NAR download cold (MB/s)" - "$s3_cold" - "$(load)"
  printf '%-6s %-28s %10s %10s %8.2f  %s\n' "$tree" "NAR download hot (MB/s)" "$emb_hot" "$s3_hot" "$(echo "$s3_hot / $emb_hot" | bc -l)" "$(load)"
  printf '%-6s %-28s %10s %10s %8s\n' "$tree" "daemon peak RSS (MB)" "$emb_rss" "$s3_rss" -
done
echo "(import ratio: s3+pg / embedded, lower is better; download ratio: s3+pg / embedded, higher is better)"
