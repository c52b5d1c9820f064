#!/usr/bin/env bash
# Installs what cairn's tests need on a fresh Debian (bookworm) machine, idempotently:
#   * nix-bin (Nix 2.8): the oracle that NAR, hash, store path, narinfo and key tests
#     compare against; nix-setup-systemd for the nixbld group that chroot stores need
#   * xz-utils, zstd: compressors the binary cache tests feed to Nix
#   * systemd: systemd-analyze, which checks the unit file under contrib/
#   * fuse3: fusermount3 and the FUSE mount helper, for the `cairn mount` tests
#     (crates/cli/tests/mount.rs; they also need /dev/fuse, and fail without it)
#   * postgresql: the PostgreSQL server the PostgreSQL backends' tests start
#   * a venv at $CAIRN_TEST_VENV (default /opt/cairn-test-venv) with grpcio,
#     grpcio-reflection and protobuf, for the reflection-based gRPC client in
#     tests/oracle/grpc_client.py, and prometheus_client, whose OpenMetrics parser
#     reads the daemon's /metrics in crates/cli/tests/metrics.rs
#   * s3s-fs 0.14.1 (an S3 server with SigV4 and multipart uploads, storing in a
#     directory) in $CAIRN_TEST_TOOLS/bin (default /opt/cairn-test-tools), for
#     cairn_testkit::s3; built by cargo (0.15+ needs a newer Rust than ours)
# Runs apt as root (or through sudo). Safe to re-run: does nothing when all is there.
set -euo pipefail
VENV=${CAIRN_TEST_VENV:-/opt/cairn-test-venv}
GRPC_VER=1.85.1
PROM_VER=0.21.1
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive

need=()
for p in nix-bin xz-utils zstd curl python3-venv systemd fuse3; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "install-test-deps: apt-get install ${need[*]}"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
# postgresql: the real server that cairn_testkit::postgres starts for the PostgreSQL backends' tests
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  echo "install-test-deps: apt-get install postgresql"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq postgresql >/dev/null
fi
getent group nixbld >/dev/null || $SUDO apt-get install -y -qq nix-setup-systemd >/dev/null

if ! "$VENV/bin/python" -c "import grpc, grpc_reflection; assert grpc.__version__ == '$GRPC_VER'" 2>/dev/null; then
  echo "install-test-deps: creating $VENV (grpcio $GRPC_VER)"
  $SUDO python3 -m venv "$VENV" 2>/dev/null || $SUDO /usr/bin/python3 -m venv "$VENV"
  $SUDO "$VENV/bin/pip" install -q "grpcio==$GRPC_VER" "grpcio-reflection==$GRPC_VER" "grpcio-tools==$GRPC_VER"
fi
if ! "$VENV/bin/python" -c "import prometheus_client as p; from importlib.metadata import version; assert version('prometheus_client') == '$PROM_VER'" 2>/dev/null; then
  echo "install-test-deps: prometheus_client $PROM_VER into $VENV"
  $SUDO "$VENV/bin/pip" install -q "prometheus_client==$PROM_VER"
fi
TOOLS=${CAIRN_TEST_TOOLS:-/opt/cairn-test-tools}
S3S_VER=0.14.1
if ! "$TOOLS/bin/s3s-fs" --version 2>/dev/null | grep -qx "s3s-fs $S3S_VER"; then
  echo "install-test-deps: cargo install s3s-fs $S3S_VER into $TOOLS"
  $SUDO env "PATH=$PATH" cargo install -q "s3s-fs@$S3S_VER" --locked --features binary --root "$TOOLS"
fi
nix --version
