#!/usr/bin/env bash
# Boots the test VM and runs a command in it: Debian's 6.1 kernel (tests/vm/prepare.sh)
# under qemu-system-x86_64 in TCG mode (software emulation: nested KVM hangs on these
# machines), two vCPUs, the host's root read-only over virtio 9p under a tmpfs overlay,
# pure cgroup v2 with every controller. The command runs as root in the current
# directory (seen at the same path in the guest), its output goes to this terminal, and
# its exit status is this script's. As root.
#
#   tests/vm/boot.sh [--timeout SECONDS] [--memory MiB] -- COMMAND [ARGS...]
#
# The guest reaches nothing outside itself (no network device): tests in it run their
# own registry on its loopback. Nothing is left behind: the output dir is removed and
# qemu is stopped (by its pid) on exit.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${CAIRN_VM_CACHE:-/var/cache/cairn-tests/vm}
kver=$(cat "$cache/kernel-version" 2>/dev/null || true)
initrd="$cache/initrd-$kver-$(cat "$here/initramfs-init" "$here/prepare.sh" | sha256sum | cut -c1-12).cpio.gz"
if [ "${1:-}" = --print-initrd ]; then
    echo "$initrd"
    exit 0
fi

timeout=1200
memory=4096
while [ $# -gt 0 ]; do
    case "$1" in
        --timeout) timeout=$2; shift 2 ;;
        --memory) memory=$2; shift 2 ;;
        --) shift; break ;;
        *) break ;;
    esac
done
if [ $# -eq 0 ]; then
    echo "usage: tests/vm/boot.sh [--timeout S] [--memory MiB] -- COMMAND [ARGS...]" >&2
    exit 2
fi

if [ -z "$kver" ] || [ ! -f "$initrd" ]; then
    echo "tests/vm/boot.sh: no guest kernel or initramfs: run tests/vm/prepare.sh" >&2
    exit 1
fi

out=$(mktemp -d /tmp/cairn-vm.XXXXXX)
qemu_pid=
cleanup() {
    if [ -n "$qemu_pid" ] && kill -0 "$qemu_pid" 2>/dev/null; then
        kill "$qemu_pid" 2>/dev/null || true
        wait "$qemu_pid" 2>/dev/null || true
    fi
    rm -rf "$out"
}
trap cleanup EXIT

cp "$here/guest.sh" "$out/guest.sh"
echo "$cache/kernel-$kver/modules" >"$out/modules"
pwd >"$out/cwd"
printf '%q ' "$@" >"$out/cmd.sh"
echo >>"$out/cmd.sh"

qemu-system-x86_64 \
    -machine q35 -accel tcg,thread=multi -cpu max -smp 2 -m "$memory" \
    -nographic -no-reboot -nic none \
    -kernel "$cache/kernel-$kver/vmlinuz" -initrd "$initrd" \
    -append "console=ttyS0 panic=-1 quiet loglevel=4 cgroup_no_v1=all" \
    -fsdev local,id=host,path=/,security_model=passthrough,readonly=on,multidevs=remap \
    -device virtio-9p-pci,fsdev=host,mount_tag=host \
    -fsdev local,id=out,path="$out",security_model=passthrough \
    -device virtio-9p-pci,fsdev=out,mount_tag=out \
    </dev/null &
qemu_pid=$!

deadline=$((SECONDS + timeout))
while kill -0 "$qemu_pid" 2>/dev/null; do
    if [ $SECONDS -ge $deadline ]; then
        echo "tests/vm/boot.sh: the guest did not finish within ${timeout}s" >&2
        exit 124
    fi
    sleep 1
done
wait "$qemu_pid" || true
qemu_pid=
if [ ! -f "$out/rc" ]; then
    echo "tests/vm/boot.sh: the guest stopped without running the command to its end" >&2
    exit 1
fi
exit "$(cat "$out/rc")"
