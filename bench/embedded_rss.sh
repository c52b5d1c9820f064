#!/usr/bin/env bash
# Peak memory of the embedded store writing and reading one blob of growing size:
# the "Maximum resident set size" must stay flat.
# Usage: bench/embedded_rss.sh [MiB...]   (default: 64 256 1024 4096)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v /usr/bin/time >/dev/null || { echo "needs /usr/bin/time (apt-get install -y time)" >&2; exit 1; }
cargo build -q --release -p cairn-castore --example embedded_rss
for mib in "${@:-64 256 1024 4096}"; do
  for m in $mib; do
    out=$(/usr/bin/time -v target/release/examples/embedded_rss "$m" 2>"${TMPDIR:-/tmp}/rss.$$")
    rss=$(grep "Maximum resident" "${TMPDIR:-/tmp}/rss.$$" | awk '{print $NF}')
    echo "$out; peak RSS ${rss} KiB"
  done
done
rm -f "${TMPDIR:-/tmp}/rss.$$"
