#!/usr/bin/env bash
# Stops the cluster hack/kube/up.sh started under DIR and cleans up what it leaves on the host:
# first the pods (through the API, so the kubelet and containerd tear down their sandboxes,
# network namespaces and veths), then exactly the processes whose PIDs are in DIR/pids (kubelet,
# containerd, scheduler, controller manager, apiserver, etcd), any runc shim still serving
# DIR's containerd (found by its -address argument, ended by PID), the mounts under DIR, the
# kubelet's cgroups (kubepods under /sys/fs/cgroup/*/), the nftables tables of netpol.sh's policy
# engine, the CNI bridge and the address interface (kiln-kube0).
# DIR itself is kept (logs, certificates); remove it yourself.
#
# Usage: hack/kube/down.sh DIR
set -uo pipefail
[ $# -eq 1 ] || { echo "usage: hack/kube/down.sh DIR" >&2; exit 2; }
repo=$(cd "$(dirname "$0")/../.." && pwd)
kbin=$repo/bin/kube
dir=$(cd "$1" && pwd) || exit 1
sock=$dir/containerd/containerd.sock
iface=kiln-kube0
bridge=kiln-kube-br0

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

# 3. Mounts under DIR (pod volumes, containerd's snapshots and shm), deepest first.
awk -v d="$dir/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r | while read -r m; do
  umount "$m" 2>/dev/null || umount -l "$m"
done
# 4. The kubelet's cgroups, deepest first (they are empty once the processes are gone).
for root in /sys/fs/cgroup/*/; do
  [ -d "$root/kubepods" ] || continue
  find "$root/kubepods" -depth -type d -exec rmdir {} \; 2>/dev/null
  [ -d "$root/kubepods" ] && echo "kube/down: could not remove $root/kubepods" >&2
done
# 5. Network: the policy engine's nftables tables if hack/kube/netpol.sh ran it and it could not
# remove them itself, the CNI bridge and the address interface.
if [ -e "$dir/netpol.on" ]; then
  for t in kube-network-policies kube-network-policies-dnscache; do
    nft list table inet "$t" >/dev/null 2>&1 && nft delete table inet "$t" && echo "kube/down: removed nftables table inet $t"
  done
  rm -f "$dir/netpol.on"
fi
ip link show "$bridge" >/dev/null 2>&1 && ip link del "$bridge"
ip link show "$iface" >/dev/null 2>&1 && ip link del "$iface"
echo "kube/down: done ($dir kept)"
