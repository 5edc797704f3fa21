#!/usr/bin/env bash
# Makes what the test VM boots, once per machine, under /var/cache/cairn-tests/vm:
# Debian's qemu-system-x86 (installed if missing), Debian's own kernel (the package
# linux-image-amd64 points at, unpacked with dpkg-deb, with a modules.dep made by
# busybox's depmod) and a small initramfs (busybox-static and the modules that mount the
# host's root over 9p). Quick when done: it checks and returns. As root.
#
# The guest is the node as production runs it: Debian's 6.1 kernel on a pure cgroup v2
# hierarchy with every controller. See tests/vm/boot.sh for how it boots.
set -euo pipefail

cache=${CAIRN_VM_CACHE:-/var/cache/cairn-tests/vm}
mkdir -p "$cache"

need=()
for pkg in qemu-system-x86 busybox-static; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "tests/vm/prepare.sh: installing ${need[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The kernel: whatever version is there already, else the one linux-image-amd64 names.
kver=$(cat "$cache/kernel-version" 2>/dev/null || true)
if [ -z "$kver" ] || [ ! -f "$cache/kernel-$kver/vmlinuz" ]; then
    pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
    if [ -z "$pkg" ]; then
        apt-get update -qq
        pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
    fi
    kver=${pkg#linux-image-}
    tmp=$(mktemp -d "$cache/.make.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    (cd "$tmp" && apt-get download -q "$pkg" >/dev/null 2>&1) \
        || { echo "tests/vm/prepare.sh: apt-get download $pkg failed" >&2; exit 1; }
    dpkg-deb -x "$tmp"/*.deb "$tmp/k"
    busybox depmod -b "$tmp/k" "$kver"
    rm -rf "$cache/kernel-$kver"
    mkdir -p "$cache/kernel-$kver.tmp"
    mv "$tmp/k/boot/vmlinuz-$kver" "$cache/kernel-$kver.tmp/vmlinuz"
    mv "$tmp/k/lib/modules/$kver" "$cache/kernel-$kver.tmp/modules"
    mv "$cache/kernel-$kver.tmp" "$cache/kernel-$kver"
    echo "$kver" >"$cache/kernel-version.tmp"
    mv "$cache/kernel-version.tmp" "$cache/kernel-version"
    rm -rf "$tmp"
    trap - EXIT
fi

# The initramfs: busybox and the modules that reach the root over virtio 9p, named by
# the hash of its /init so that a change to it makes a new one.
initrd=$(bash "$(dirname "$0")/boot.sh" --print-initrd)
if [ ! -f "$initrd" ]; then
    tmp=$(mktemp -d "$cache/.initrd.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    mkdir -p "$tmp/bin" "$tmp/lib/modules"
    cp /bin/busybox "$tmp/bin/busybox"
    for m in drivers/virtio/virtio_ring drivers/virtio/virtio \
        drivers/virtio/virtio_pci_legacy_dev drivers/virtio/virtio_pci_modern_dev \
        drivers/virtio/virtio_pci fs/netfs/netfs fs/fscache/fscache net/9p/9pnet \
        net/9p/9pnet_virtio fs/9p/9p fs/overlayfs/overlay; do
        cp "$cache/kernel-$kver/modules/kernel/$m.ko" "$tmp/lib/modules/"
        basename "$m" >>"$tmp/lib/modules/order"
    done
    cp "$(dirname "$0")/initramfs-init" "$tmp/init"
    chmod 755 "$tmp/init"
    (cd "$tmp" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1) >"$initrd.tmp"
    mv "$initrd.tmp" "$initrd"
    rm -rf "$tmp"
    trap - EXIT
fi
echo "tests/vm/prepare.sh: kernel $kver and $initrd ready" >&2
