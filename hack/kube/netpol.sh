#!/usr/bin/env bash
# Runs a NetworkPolicy engine on the cluster hack/kube/up.sh started under DIR: Debian's bridge CNI
# enforces no policy, so kube-network-policies (sigs.k8s.io/kube-network-policies, built by
# hack/kube/build.sh) runs as a privileged host-network pod in kube-system, from an image packed
# here and imported into containerd. It puts an nftables table "kube-network-policies" (inet) in
# the host's ruleset that sends pod traffic covered by a policy to an nfqueue and drops what no
# policy allows; it removes the table when it stops, and hack/kube/down.sh removes it if not.
#
# A bare Pod, not a DaemonSet: down.sh deletes all pods before stopping the kubelet, and a
# DaemonSet would put this one back in between.
#
# Usage: hack/kube/netpol.sh DIR
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: hack/kube/netpol.sh DIR" >&2; exit 2; }
repo=$(cd "$(dirname "$0")/../.." && pwd)
kbin=$repo/bin/kube
dir=$(cd "$1" && pwd)
export KUBECONFIG=$dir/kubeconfig
version=$(cat "$kbin/kube-network-policies.version")
image=localhost/kiln/kube-network-policies:$version
api=$(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.server}')
api_host=${api#https://}; api_port=${api_host##*:}; api_host=${api_host%:*}

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
    args: ["--hostname-override=\$(NODE_NAME)", "--disable-nri", "--nfqueue-id=98", "--metrics-bind-address=127.0.0.1:20280", "--v=2"]
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
# Ready means started; give it a moment to sync its informers and write its table.
for _ in $(seq 40); do nft list table inet kube-network-policies >/dev/null 2>&1 && break; sleep 0.25; done
echo "kube/netpol: kube-network-policies $version running (nftables table inet kube-network-policies)"
