#!/usr/bin/env bash
# Runs a NetworkPolicy engine on the cluster hack/kube/up.sh started under DIR: Debian's bridge CNI
# enforces no policy, so kube-network-policies (sigs.k8s.io/kube-network-policies, built by
# hack/kube/build.sh) runs as a privileged host-network pod in kube-system, from an image packed
# here and imported into containerd. It reads the packets of new connections from an nfqueue,
# judges them by the NetworkPolicies and accepts or drops them.
#
# Which packets go to its queue is set here, with iptables, not by the engine: it writes an
# nftables table whose rules use nftables' "queue" expression, and kernels built without
# CONFIG_NFT_QUEUE (this machine's: "Could not process rule: No such file or directory") refuse
# it, while xtables' NFQUEUE target (iptables-nft through nft_compat, or iptables-legacy) works.
# The engine logs that failure and keeps serving its queue. The rules, in the mangle table:
#   KILN-NETPOL-OUT (from POSTROUTING): the engine's own rules: new connections from or to a pod
#     IP, except those of root processes on the node (the kubelet's probes; the engine exempts
#     them too);
#   KILN-NETPOL-IN (from INPUT): new connections from the pod network to the node itself (the
#     apiserver at KUBE_ADDR, the bridge's gateway), which never pass postrouting: without it
#     an egress policy would not hold for the node's addresses.
# "--queue-bypass": while no engine listens, packets pass. hack/kube/down.sh removes the chains
# and any table the engine left.
#
# A bare Pod, not a DaemonSet: down.sh deletes all pods before stopping the kubelet, and a
# DaemonSet would put this one back in between.
#
# Usage: hack/kube/netpol.sh DIR
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: hack/kube/netpol.sh DIR" >&2; exit 2; }
repo=$(cd "$(dirname "$0")/../.." && pwd)
kbin=$repo/bin/kube
export PATH="$kbin:$PATH" # its kubectl
dir=$(cd "$1" && pwd)
export KUBECONFIG=$dir/kubeconfig
version=$(cat "$kbin/kube-network-policies.version")
image=localhost/kiln/kube-network-policies:$version
api=$(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.server}')
api_host=${api#https://}; api_port=${api_host##*:}; api_host=${api_host%:*}
# shellcheck source=/dev/null
. "$dir/cluster.env" # KUBE_BRIDGE, KUBE_POD_CIDR (hack/kube/up.sh)
queue=98

root=$dir/images/netpol-root
rm -rf "$root"; mkdir -p "$root/bin" "$root/tmp"
cp "$kbin/kube-network-policies" "$root/bin/netpol"
"$kbin/ociarchive" -name "$image" -entrypoint /bin/netpol -o "$dir/images/netpol.tar" "$root"
"$kbin/ctr" --address "$dir/containerd/containerd.sock" -n k8s.io images import "$dir/images/netpol.tar" >>"$dir/logs/images.log" 2>&1
touch "$dir/netpol.on" # tells down.sh the host's nftables may hold this engine's table

kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: ServiceAccount
metadata: {name: kube-network-policies, namespace: kube-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: kiln-kube-network-policies}
rules:
- {apiGroups: [""], resources: [pods, namespaces, nodes], verbs: [get, list, watch]}
- {apiGroups: [networking.k8s.io], resources: [networkpolicies], verbs: [list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: kiln-kube-network-policies}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: kiln-kube-network-policies}
subjects: [{kind: ServiceAccount, name: kube-network-policies, namespace: kube-system}]
---
apiVersion: v1
kind: Pod
metadata: {name: kube-network-policies, namespace: kube-system, labels: {app: kube-network-policies}}
spec:
  hostNetwork: true
  serviceAccountName: kube-network-policies
  priorityClassName: system-node-critical
  tolerations: [{operator: Exists}]
  containers:
  - name: netpol
    image: $image
    imagePullPolicy: Never
    # No NRI (containerd runs without it here): pod IPs come from the API.
    args: ["--hostname-override=\$(NODE_NAME)", "--disable-nri", "--nfqueue-id=$queue", "--metrics-bind-address=127.0.0.1:20280", "--netfilter-bug-1766-fix=false", "--v=2"]
    env:
    - name: NODE_NAME
      valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
    # There is no kube-proxy, so the kubernetes Service's ClusterIP leads nowhere: talk to the
    # apiserver's own address (its certificate names it).
    - {name: KUBERNETES_SERVICE_HOST, value: "$api_host"}
    - {name: KUBERNETES_SERVICE_PORT, value: "$api_port"}
    securityContext:
      privileged: true
EOF
kubectl wait --for=condition=Ready pod/kube-network-policies -n kube-system --timeout=60s >/dev/null
# Ready means started: wait until it listens on its queue (the kernel lists the queue's port id).
for _ in $(seq 40); do awk -v q="$queue" '$1 == q {f=1} END {exit !f}' /proc/net/netfilter/nfnetlink_queue && break; sleep 0.25; done
awk -v q="$queue" '$1 == q {f=1} END {exit !f}' /proc/net/netfilter/nfnetlink_queue \
  || { echo "kube/netpol: kube-network-policies does not listen on nfqueue $queue" >&2; kubectl logs -n kube-system kube-network-policies --tail 20 >&2; exit 1; }
# The queue rules (see the top). A previous run's go first.
ipt() { iptables -w 10 -t mangle "$@"; }
for c in OUT:POSTROUTING IN:INPUT; do
  while ipt -D "${c#*:}" -j "KILN-NETPOL-${c%%:*}" 2>/dev/null; do :; done
  ipt -F "KILN-NETPOL-${c%%:*}" 2>/dev/null || ipt -N "KILN-NETPOL-${c%%:*}"
done
q=(-j NFQUEUE --queue-num "$queue" --queue-bypass)
ipt -A KILN-NETPOL-OUT -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN
ipt -A KILN-NETPOL-OUT -m owner --uid-owner 0 -j RETURN
ipt -A KILN-NETPOL-OUT -s "$KUBE_POD_CIDR" "${q[@]}"
ipt -A KILN-NETPOL-OUT -d "$KUBE_POD_CIDR" "${q[@]}"
ipt -A KILN-NETPOL-IN -i "$KUBE_BRIDGE" -s "$KUBE_POD_CIDR" -m conntrack --ctstate NEW "${q[@]}"
ipt -A POSTROUTING -j KILN-NETPOL-OUT
ipt -A INPUT -j KILN-NETPOL-IN
echo "kube/netpol: kube-network-policies $version running on nfqueue $queue (iptables mangle chains KILN-NETPOL-OUT, KILN-NETPOL-IN)"
