#!/usr/bin/env bash
# Builds the single-node Kubernetes that hack/kube/up.sh runs, from pinned Go modules, into bin/kube/:
#   etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kubectl  (k8s.io/kubernetes and
#     go.etcd.io/etcd/server/v3, pinned in hack/kube/go.mod and hack/kube/containerd/go.mod)
#   containerd, ctr, containerd-shim-runc-v2                                 (hack/kube/containerd/go.mod)
#   kube-network-policies                                                    (hack/kube/netpol/go.mod)
#   pause        (hack/kube/pause: the pod sandbox process, packed into an image by up.sh)
#   ociarchive   (hack/kube/ociarchive: packs a rootfs into an OCI archive for `ctr images import`)
# runc is bin/runc (hack/setup.sh); the CNI plugins are Debian's (/usr/lib/cni).
#
# Two modules because they cannot share one: containerd v2.4.2 needs k8s.io/cri-api and client-go
# v0.37.0, while k8s.io/kubernetes v1.34.4 needs its staging modules replaced by v0.34.4. etcd
# sits with containerd (its server builds there; kube-apiserver only needs etcd's client).
#
# Idempotent: a binary is rebuilt only when it is missing or reports another version than the
# pinned one. The first run compiles for about 20 minutes on 2 cores (kubelet ~8 min,
# containerd ~5, kube-apiserver ~3, kube-controller-manager ~3); each step says so before it starts.
# Builds run under `nice -n 19` (KUBE_BUILD_NICE overrides) so they yield to other work.
#
# Usage: hack/kube/build.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
out=bin/kube
mkdir -p "$out"
nice_cmd=(nice -n "${KUBE_BUILD_NICE:-19}")

ver() { (cd "$1" && go list -m -f '{{.Version}}' "$2"); }
K8S_VERSION=$(ver hack/kube k8s.io/kubernetes)
CONTAINERD_VERSION=$(ver hack/kube/containerd github.com/containerd/containerd/v2)
ETCD_VERSION=$(ver hack/kube/containerd go.etcd.io/etcd/server/v3)

# have BIN WANT: the binary exists and its --version output contains WANT. grep reads it all:
# with -q it would stop at the match, the binary could die of SIGPIPE and pipefail say no.
have() { [ -x "$out/$1" ] && "$out/$1" --version 2>/dev/null | grep -F -- "$2" >/dev/null; }

step() { # step NAME MINUTES
  echo "kube/build: building $1 (about $2 minutes the first time)..."
}

# Kubernetes binaries: without gitVersion they report v0.0.0-master and the kubelet/apiserver
# version-skew checks fail.
k8s_ldflags="-X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=$(echo "${K8S_VERSION#v}" | cut -d. -f1) -X k8s.io/component-base/version.gitMinor=$(echo "${K8S_VERSION#v}" | cut -d. -f2) -X k8s.io/component-base/version.gitTreeState=clean"
for c in kube-scheduler:1 kube-apiserver:4 kube-controller-manager:3 kubelet:8; do
  name=${c%%:*}
  if ! have "$name" "Kubernetes $K8S_VERSION"; then
    step "$name $K8S_VERSION" "${c##*:}"
    start=$SECONDS
    (cd hack/kube && "${nice_cmd[@]}" go build -ldflags "$k8s_ldflags" -o "../../$out/$name" "k8s.io/kubernetes/cmd/$name")
    echo "kube/build: $name built in $((SECONDS - start)) s"
  fi
done
# kubectl of the cluster's version: the scripts put bin/kube first on PATH (Debian 12's
# kubernetes-client is 1.20, too old for a 1.34 server). It has no --version.
if ! { [ -x "$out/kubectl" ] && "$out/kubectl" version --client 2>/dev/null | grep -F "Client Version: $K8S_VERSION" >/dev/null; }; then
  step "kubectl $K8S_VERSION" 2
  start=$SECONDS
  (cd hack/kube && "${nice_cmd[@]}" go build -ldflags "$k8s_ldflags" -o "../../$out/kubectl" k8s.io/kubernetes/cmd/kubectl)
  echo "kube/build: kubectl built in $((SECONDS - start)) s"
fi

if ! have etcd "etcd Version: ${ETCD_VERSION#v}"; then
  step "etcd $ETCD_VERSION" 1
  start=$SECONDS
  (cd hack/kube/containerd && "${nice_cmd[@]}" go build -o "../../../$out/etcd" go.etcd.io/etcd/server/v3)
  echo "kube/build: etcd built in $((SECONDS - start)) s"
fi

ctr_ldflags="-X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION -X github.com/containerd/containerd/v2/version.Revision=$CONTAINERD_VERSION"
for name in containerd ctr containerd-shim-runc-v2; do
  if ! have "$name" " $CONTAINERD_VERSION"; then
    step "$name $CONTAINERD_VERSION" 5
    start=$SECONDS
    (cd hack/kube/containerd && "${nice_cmd[@]}" go build -tags urfave_cli_no_docs -ldflags "$ctr_ldflags" \
      -o "../../../$out/$name" "github.com/containerd/containerd/v2/cmd/$name")
    echo "kube/build: $name built in $((SECONDS - start)) s"
  fi
done

# kube-network-policies (sigs.k8s.io, hack/kube/netpol/go.mod): a NetworkPolicy engine on nftables
# + nfqueue, since Debian's bridge CNI enforces no policy. hack/kube/netpol.sh runs it as a pod,
# so it is static. It has no --version: a stamp file beside it records the version built.
NETPOL_VERSION=$(ver hack/kube/netpol sigs.k8s.io/kube-network-policies)
if [ ! -x "$out/kube-network-policies" ] || [ "$(cat "$out/kube-network-policies.version" 2>/dev/null)" != "$NETPOL_VERSION" ]; then
  step "kube-network-policies $NETPOL_VERSION" 2
  start=$SECONDS
  (cd hack/kube/netpol && CGO_ENABLED=0 "${nice_cmd[@]}" go build -trimpath -o "../../../$out/kube-network-policies" sigs.k8s.io/kube-network-policies/cmd)
  echo "$NETPOL_VERSION" >"$out/kube-network-policies.version"
  echo "kube/build: kube-network-policies built in $((SECONDS - start)) s"
fi

# The pod sandbox ("pause") program: static, no cgo, so it runs in an image with nothing else;
# and the image packer. Both are small and stdlib-only.
for name in pause ociarchive; do
  if [ ! -x "$out/$name" ] || [ "hack/kube/$name/main.go" -nt "$out/$name" ]; then
    (cd hack/kube && CGO_ENABLED=0 "${nice_cmd[@]}" go build -trimpath -ldflags "-s -w" -o "../../$out/$name" "./$name")
  fi
done

echo "kube/build: done: $("$out/kube-apiserver" --version), $("$out/etcd" --version | head -1), $("$out/containerd" --version)"
