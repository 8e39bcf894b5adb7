#!/bin/sh
# The init process of a User-mode Linux guest that runs one job for the host (test/esp/uml.ts).
#
# The guest's root is the host's own file system (hostfs), so node, iproute2 and the checkout are all
# here. What must stay the guest's own is mounted over: /proc, /sys, /dev, a tmpfs on /run (network
# namespace files, daemon sockets; otherwise `ip netns add` would write into the host's /run), a tmpfs on
# /tmp. The kernel's modules live under /usr/lib/uml/modules/<version>; modprobe is pointed at them through
# a modules root made in /run, so nothing is written to the host's /lib/modules.
#
# The job is a directory the host made (SHOAL_JOB, from the kernel command line): it holds `job.sh`, which
# is run with sh; its output goes to the console (the host's UML process's standard output) and its exit
# status to `status` in the same directory. The guest halts when the job ends.

export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LC_ALL=C

fail() {
  echo "guest-init: $*"
  [ -n "$SHOAL_JOB" ] && [ -d "$SHOAL_JOB" ] && echo "guest-init: $*" > "$SHOAL_JOB/init-error"
  halt -f
}

mount -t proc proc /proc || fail "cannot mount /proc"
mount -t sysfs sysfs /sys || fail "cannot mount /sys"
# cgroups for runc (containerd runs shoal's containers): the unified hierarchy, as on a current host.
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null || echo "guest-init: (no cgroup2: containers cannot start)"
mount -t devtmpfs devtmpfs /dev 2>/dev/null || true
mkdir -p /dev/pts /dev/shm 2>/dev/null
mount -t devpts devpts /dev/pts 2>/dev/null || true
mount -t tmpfs tmpfs /dev/shm 2>/dev/null || true
mount -t tmpfs -o mode=0755 tmpfs /run || fail "cannot mount a tmpfs on /run"
mount -t tmpfs -o mode=1777 tmpfs /tmp || fail "cannot mount a tmpfs on /tmp"

[ -n "$SHOAL_JOB" ] && [ -f "$SHOAL_JOB/job.sh" ] || fail "no job (SHOAL_JOB=$SHOAL_JOB)"

# Modules: /run/uml-modroot/lib/modules/<version> is the package's module tree; every modprobe (ours, the
# kernel's request_module, iptables') goes through a wrapper that names that root.
ver=$(uname -r)
mods=/usr/lib/uml/modules/$ver
[ -d "$mods" ] || fail "no modules for $ver under /usr/lib/uml/modules"
mkdir -p /run/uml-modroot/lib/modules/$ver
mount --bind "$mods" /run/uml-modroot/lib/modules/$ver || fail "cannot bind the modules"
cat > /run/uml-modprobe <<MP
#!/bin/sh
exec /usr/sbin/modprobe -d /run/uml-modroot "\$@"
MP
chmod 755 /run/uml-modprobe
echo /run/uml-modprobe > /proc/sys/kernel/modprobe

# What shoal's data plane and its tests use: ESP with AES-GCM, xfrm netlink, VXLAN, bridges, veths, legacy
# iptables with its marks, u32, policy, conntrack and NAT, and packet sockets for tcpdump.
for m in af_packet esp4 xfrm_user xfrm_algo gcm ghash_generic aes_generic ctr seqiv echainiv \
  vxlan veth bridge ip_tables iptable_filter iptable_mangle iptable_nat iptable_raw x_tables xt_policy \
  xt_u32 xt_mark xt_MASQUERADE xt_conntrack xt_tcpudp xt_comment nf_conntrack nf_nat nf_tables; do
  /run/uml-modprobe "$m" 2>/dev/null || echo "guest-init: (module $m not loaded)"
done
ip link set lo up

cd "${SHOAL_CWD:-/}" || fail "no directory ${SHOAL_CWD}"
# The job's output reaches the host on the console, and a copy stays in the job directory.
{ sh "$SHOAL_JOB/job.sh"; echo $? > "$SHOAL_JOB/status.part"; } 2>&1 | tee "$SHOAL_JOB/output"
mv "$SHOAL_JOB/status.part" "$SHOAL_JOB/status" 2>/dev/null || fail "the job left no exit status"
sync
halt -f
