#!/usr/bin/env bash
# Peak memory of the embedded store writing and reading one blob of growing size:
# the "Maximum resident set size" must stay flat. Per size: one process writing
# then reading (peaks of both phases; the read phase starts from what writing
# left), then a new process only reading the blob another one wrote.
# Usage: bench/embedded_rss.sh [MiB...]   (default: 64 256 1024 4096)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v /usr/bin/time >/dev/null || { echo "needs /usr/bin/time (apt-get install -y time)" >&2; exit 1; }
cargo build -q --release -p cairn-castore --example embedded_rss
bin=target/release/examples/embedded_rss
for mib in "${@:-64 256 1024 4096}"; do
  for m in $mib; do
    out=$(/usr/bin/time -v $bin "$m" 2>"${TMPDIR:-/tmp}/rss.$$")
    rss=$(grep "Maximum resident" "${TMPDIR:-/tmp}/rss.$$" | awk '{print $NF}')
    echo "$out; peak RSS ${rss} KiB"
    # The reader alone: a new process opens the store and reads the blob.
    d=$(mktemp -d "${TMPDIR:-/tmp}/embedded_rss.XXXXXX")
    $bin "$m" 1 write "$d" >/dev/null
    $bin "$m" 1 read "$d"
    rm -rf "$d"
  done
done
rm -f "${TMPDIR:-/tmp}/rss.$$"
