# Second stage of the test VM's boot (tests/vm/boot.sh copies it into the output share
# and the initramfs hands over to it as pid 1): makes the guest a node as production runs
# it (its own /run, /tmp, devices, the pure cgroup v2 hierarchy with every controller
# enabled for children, the guest kernel's modules), runs the command boot.sh left in
# /.cairn-vm/cmd.sh, records its exit status in /.cairn-vm/rc and powers off.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root
out=/.cairn-vm
kver=$(uname -r)
mount -t tmpfs -o mode=755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=1777 tmpfs /var/tmp
mkdir -p /dev/pts /dev/shm /dev/mqueue
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t mqueue mqueue /dev/mqueue
mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf 2>/dev/null
# The guest kernel's modules, loaded on demand by busybox's modprobe.
mkdir -p "/lib/modules/$kver"
mount --bind "$(cat $out/modules)" "/lib/modules/$kver"
ln -sf /bin/busybox /sbin/modprobe
echo /sbin/modprobe >/proc/sys/kernel/modprobe
for m in veth bridge br_netfilter nf_nat nf_conntrack iptable_nat iptable_filter xt_MASQUERADE xt_conntrack xt_comment xt_mark xt_multiport nft_chain_nat nft_compat; do
    modprobe "$m" 2>/dev/null
done
controllers=$(cat /sys/fs/cgroup/cgroup.controllers)
for c in $controllers; do
    echo "+$c" >/sys/fs/cgroup/cgroup.subtree_control
done
ip link set lo up
hostname cairn-vm
echo "guest: kernel $kver, cgroup2 controllers: $controllers"
cd "$(cat $out/cwd)"
{ sh $out/cmd.sh; echo $? >$out/rc.tmp; } 2>&1 | tee $out/log
mv $out/rc.tmp $out/rc
sync
poweroff -f
