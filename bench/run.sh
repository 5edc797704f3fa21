#!/usr/bin/env bash
# Runs cairn-bench: cairn against a private containerd (runc and crun) on this machine.
# Needs root. Installs the Debian packages it needs if missing, builds release binaries,
# and passes its arguments to cairn-bench (e.g. --smoke, --reps 20, --out table.md).
set -euo pipefail

cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "bench/run.sh: must run as root" >&2
    exit 1
fi

need=()
for pkg in containerd runc crun containernetworking-plugins docker-registry skopeo busybox-static; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${need[@]}"
fi
# The Debian package starts a system containerd; the benchmark runs its own.
if systemctl is-active --quiet containerd 2>/dev/null; then
    echo "bench/run.sh: note: the system containerd is running; the benchmark ignores it" >&2
fi

cargo build --release -p cairn-shim --bins -p cairn-bench
CAIRN_BIN_DIR="$PWD/target/release" exec target/release/cairn-bench "$@"
