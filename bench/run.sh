#!/usr/bin/env bash
# Runs cairn-bench: cairn against a private containerd (runc and crun) on this machine.
# Needs root. Installs the Debian packages it needs if missing, builds the binaries as a
# release ships them (profile dist: LTO, see Cargo.toml), and passes its other arguments
# to cairn-bench (e.g. --smoke, --reps 20, --out table.md).
#
# --debug-build (or CAIRN_BENCH_DEBUG_BUILD=1) uses the debug binaries instead and skips
# the dist build: it runs `cargo build --workspace --bins`, a no-op right after CI's own
# build, so CI's smoke (`bash bench/run.sh --debug-build --smoke`) compiles nothing more.
# Debug timings are not the benchmark's numbers; that mode only checks the harness runs.
set -euo pipefail

cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "bench/run.sh: must run as root" >&2
    exit 1
fi

profile=dist
if [ "${CAIRN_BENCH_DEBUG_BUILD:-0}" = 1 ]; then
    profile=debug
fi
args=()
for arg in "$@"; do
    case "$arg" in
        --debug-build) profile=debug ;;
        *) args+=("$arg") ;;
    esac
done

need=()
for pkg in containerd runc crun containernetworking-plugins docker-registry skopeo busybox-static; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "bench/run.sh: installing ${need[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# The Debian package starts a system containerd; the benchmark runs its own.
if systemctl is-active --quiet containerd 2>/dev/null; then
    echo "bench/run.sh: note: the system containerd is running; the benchmark ignores it" >&2
fi

# Where cargo puts binaries (CARGO_TARGET_DIR or a config's target-dir count too).
target_dir=$(cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p' || true)
target_dir=${target_dir:-$PWD/target}

if [ "$profile" = dist ]; then
    cargo build --profile dist -p cairnd -p cairn-shim -p cairnctl --bins -p cairn-bench
else
    cargo build --workspace --bins
fi
bin_dir="$target_dir/$profile"
for bin in cairnd cairn-shim cairn-bench; do
    if [ ! -x "$bin_dir/$bin" ]; then
        echo "bench/run.sh: $bin_dir/$bin is missing" >&2
        exit 1
    fi
done
echo "bench/run.sh: $profile binaries from $bin_dir" >&2
# exec: SIGINT / SIGTERM reach cairn-bench itself, which then undoes what it started.
CAIRN_BIN_DIR="$bin_dir" exec "$bin_dir/cairn-bench" ${args[@]+"${args[@]}"}
