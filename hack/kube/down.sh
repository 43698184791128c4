#!/usr/bin/env bash
# Stops the cluster hack/kube/up.sh started under DIR and cleans up what it leaves on the host:
# first the pods (through the API, so the kubelet and containerd tear down their sandboxes,
# network namespaces and veths), then exactly the processes whose PIDs are in DIR/pids (kubelet,
# containerd, scheduler, controller manager, apiserver, etcd), any runc shim still serving
# DIR's containerd (found by its -address argument, ended by PID), the mounts under DIR, the
# kubelet's cgroups (kubepods under /sys/fs/cgroup/*/) and iptables chains, netpol.sh's chains and any
# nftables table its engine left, the CNI bridge, the address interface (kiln-kube0) and the
# /tmp/hostpath_pv symlink. The machine-wide ones (cgroups, network, symlink) only when DIR's is
# the machine's current cluster (/run/kiln-kube.dir names it), so stopping a stale DIR late
# cannot break a newer cluster. The owner's watchdog (up.sh, KUBE_OWNER_PID) is stopped first;
# any other process recorded in DIR/pids (builder-image.sh's kiln serve) last.
# Runs one at a time per DIR (a lock on DIR/down.lock): the watchdog and a test's cleanup may
# both call it. DIR itself is kept (logs, certificates); remove it yourself.
#
# Usage: hack/kube/down.sh DIR
set -uo pipefail
[ $# -eq 1 ] || { echo "usage: hack/kube/down.sh DIR" >&2; exit 2; }
repo=$(cd "$(dirname "$0")/../.." && pwd)
kbin=$repo/bin/kube
export PATH="$kbin:$PATH" # its kubectl
dir=$(cd "$1" && pwd) || exit 1
sock=$dir/containerd/containerd.sock
iface=kiln-kube0
bridge=kiln-kube-br0

exec 9>"$dir/down.lock"
flock 9
record=/run/kiln-kube.dir
current=0
{ [ ! -s "$record" ] || [ "$(cat "$record")" = "$dir" ]; } && current=1

alive() { [ -s "$dir/pids/$1" ] && kill -0 "$(cat "$dir/pids/$1")" 2>/dev/null; }
# stop NAME: SIGTERM the recorded PID, SIGKILL after 20 s.
stop() {
  alive "$1" || { rm -f "$dir/pids/$1"; return 0; }
  local pid; pid=$(cat "$dir/pids/$1")
  kill -TERM "$pid"
  for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  rm -f "$dir/pids/$1"
  echo "kube/down: stopped $1 (pid $pid)"
}

stop watchdog
# 1. Pods, through the kubelet, while everything still runs.
if alive kube-apiserver && alive kubelet && alive containerd; then
  kubectl --kubeconfig "$dir/kubeconfig" delete pods --all --all-namespaces --grace-period=1 --timeout=60s >/dev/null 2>&1
  # The kubelet stops the sandboxes right after; wait for containerd to have no task left.
  for _ in $(seq 60); do
    [ -z "$("$kbin/ctr" --address "$sock" -n k8s.io tasks ls -q 2>/dev/null)" ] && break
    sleep 0.5
  done
fi
stop kubelet
# 2. Whatever the kubelet left: kill and delete the tasks and containers containerd still has.
if alive containerd; then
  c() { "$kbin/ctr" --address "$sock" -n k8s.io "$@"; }
  for t in $(c tasks ls -q 2>/dev/null); do c tasks kill -s SIGKILL "$t" >/dev/null 2>&1; done
  sleep 1
  for t in $(c tasks ls -q 2>/dev/null); do c tasks delete -f "$t" >/dev/null 2>&1; done
  for ct in $(c containers ls -q 2>/dev/null); do c containers delete "$ct" >/dev/null 2>&1; done
fi
stop containerd
# Shims serving this containerd outlive it: find them by their -address argument, end them by PID.
for p in /proc/[0-9]*; do
  cmd=$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null) || continue
  case "$cmd" in
    *containerd-shim-runc-v2*"-address $sock "*) kill -KILL "${p#/proc/}" 2>/dev/null && echo "kube/down: killed shim ${p#/proc/}" ;;
  esac
done
stop kube-scheduler
stop kube-controller-manager
stop kube-apiserver
stop etcd
for f in "$dir"/pids/*; do [ -e "$f" ] && stop "${f##*/}"; done
rm -f "$dir/owner"

# 3. Mounts under DIR (pod volumes, containerd's snapshots and shm), deepest first.
awk -v d="$dir/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r | while read -r m; do
  umount "$m" 2>/dev/null || umount -l "$m"
done
if [ $current = 0 ]; then
  echo "kube/down: done ($dir kept; the machine's current cluster is $(cat "$record"): its network and cgroups are left alone)"
  exit 0
fi
# 4. The kubelet's cgroups, deepest first (they are empty once the processes are gone).
for root in /sys/fs/cgroup/*/; do
  [ -d "$root/kubepods" ] || continue
  find "$root/kubepods" -depth -type d -exec rmdir {} \; 2>/dev/null
  [ -d "$root/kubepods" ] && echo "kube/down: could not remove $root/kubepods" >&2
done
# 5. Network: netpol.sh's iptables chains and the tables its engine may have left, the CNI bridge
# and the address interface.
if [ -e "$dir/netpol.on" ]; then
  for c in OUT:POSTROUTING IN:INPUT; do
    while iptables -w 10 -t mangle -D "${c#*:}" -j "KILN-NETPOL-${c%%:*}" 2>/dev/null; do :; done
    iptables -w 10 -t mangle -F "KILN-NETPOL-${c%%:*}" 2>/dev/null && iptables -w 10 -t mangle -X "KILN-NETPOL-${c%%:*}" \
      && echo "kube/down: removed iptables chain mangle KILN-NETPOL-${c%%:*}"
  done
  for t in kube-network-policies kube-network-policies-dnscache; do
    nft list table inet "$t" >/dev/null 2>&1 && nft delete table inet "$t" && echo "kube/down: removed nftables table inet $t"
  done
  rm -f "$dir/netpol.on"
fi
# The kubelet's own chains (kubelet_network_linux.go): KUBE-FIREWALL in filter (jumped to from
# INPUT and OUTPUT), KUBE-KUBELET-CANARY in mangle, nat and filter, KUBE-IPTABLES-HINT in mangle;
# it makes them again when it starts.
for ipt in iptables ip6tables; do
  for hook in INPUT OUTPUT; do
    while $ipt -w 10 -t filter -D "$hook" -j KUBE-FIREWALL 2>/dev/null; do :; done
  done
  for tc in filter:KUBE-FIREWALL mangle:KUBE-KUBELET-CANARY nat:KUBE-KUBELET-CANARY filter:KUBE-KUBELET-CANARY mangle:KUBE-IPTABLES-HINT; do
    $ipt -w 10 -t "${tc%%:*}" -F "${tc#*:}" 2>/dev/null && $ipt -w 10 -t "${tc%%:*}" -X "${tc#*:}" 2>/dev/null
  done
done
ip link show "$bridge" >/dev/null 2>&1 && ip link del "$bridge"
ip link show "$iface" >/dev/null 2>&1 && ip link del "$iface"
# 6. The dynamic volumes' symlink (up.sh); the volumes themselves are in DIR/pv.
[ "$(readlink /tmp/hostpath_pv 2>/dev/null)" = "$dir/pv" ] && rm -f /tmp/hostpath_pv
rm -f "$record"
echo "kube/down: done ($dir kept)"
