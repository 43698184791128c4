#!/usr/bin/env bash
# Starts a single-node Kubernetes under DIR from the binaries hack/kube/build.sh puts in bin/kube:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, containerd (CRI, runc = bin/runc,
# Debian's CNI plugins in /usr/lib/cni with a bridge network) and the kubelet. Writes
# DIR/kubeconfig (cluster admin), imports two local images into containerd (no registry is
# reachable here) and waits until the node is Ready:
#   localhost/kiln/pause:1    the pod sandbox (hack/kube/pause), containerd's sandbox image
#   localhost/kiln/busybox:1  Debian's busybox-static, for test pods
# Then it makes the cluster what kiln's tests need:
#   - dynamic volumes: the controller manager's hostPath provisioner and a default StorageClass
#     "kiln-local" (reclaimPolicy Delete), so a StatefulSet's volumeClaimTemplate binds by itself
#     and deleting the claim deletes the directory; the directories are under DIR/pv;
#   - NetworkPolicy enforcement: hack/kube/netpol.sh (kube-network-policies);
#   - DIR/cluster.env: the cluster's addresses (KUBE_ADDR, KUBE_POD_CIDR, KUBE_HOST_CIDR, ...).
#
# Only one cluster fits a machine (fixed addresses, ports and interface names; the machine's
# current one is named in /run/kiln-kube.dir). A cluster left running under DIR, or under
# another directory whose owner (below) is gone, is stopped first (hack/kube/down.sh).
#
# With KUBE_OWNER_PID set, a watchdog (DIR/pids/watchdog) runs hack/kube/down.sh DIR once that
# process is gone, so a test binary killed with -9 leaves no cluster running for good.
#
# Everything listens on loopback or on KUBE_ADDR, an address on an interface of its own (kiln-kube0)
# this script creates: kube-apiserver refuses a loopback advertise address. The interface is a
# bridge with no ports, not a dummy: this kernel has no dummy driver ("Unknown device type"). Every process's PID is
# in DIR/pids/; hack/kube/down.sh DIR stops exactly those and cleans up after the kubelet.
# Needs root (containerd, the kubelet, the dummy interface). Keep DIR short: containerd's unix
# socket path must fit in 108 bytes.
#
# No kube-proxy and no cluster DNS: Services have no data path; pods reach each other by pod IP.
#
# Usage: hack/kube/up.sh DIR
# Env: KUBE_ADDR (10.213.0.1), KUBE_POD_CIDR (10.215.0.0/24), KUBE_SERVICE_CIDR (10.214.0.0/24),
#      KUBE_NODE (kiln-kube), KUBE_OWNER_PID (none: the cluster runs until down.sh)
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: hack/kube/up.sh DIR" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "kube/up: needs root (containerd, kubelet, a dummy interface)" >&2; exit 1; }
repo=$(cd "$(dirname "$0")/../.." && pwd)
kbin=$repo/bin/kube
mkdir -p "$1"
dir=$(cd "$1" && pwd)
addr=${KUBE_ADDR:-10.213.0.1}
pod_cidr=${KUBE_POD_CIDR:-10.215.0.0/24}
svc_cidr=${KUBE_SERVICE_CIDR:-10.214.0.0/24}
svc_ip=${svc_cidr%.*}.1
node=${KUBE_NODE:-kiln-kube}
iface=kiln-kube0
bridge=kiln-kube-br0
api_port=16443
etcd_port=23790
kubelet_port=20250

# kubectl: bin/kube's, of the cluster's own version (Debian 12's kubernetes-client is 1.20).
export PATH="$kbin:$PATH"
for b in etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl containerd ctr containerd-shim-runc-v2 kube-network-policies pause ociarchive; do
  [ -x "$kbin/$b" ] || { echo "kube/up: $kbin/$b is missing: run hack/kube/build.sh" >&2; exit 1; }
done
[ -x "$repo/bin/runc" ] || { echo "kube/up: bin/runc is missing: run hack/setup.sh" >&2; exit 1; }
[ -x /usr/lib/cni/bridge ] || { echo "kube/up: /usr/lib/cni/bridge is missing: apt-get install containernetworking-plugins" >&2; exit 1; }
for c in openssl iptables flock curl; do
  command -v $c >/dev/null || { echo "kube/up: $c is missing: run hack/setup.sh --tests" >&2; exit 1; }
done
sock=$dir/containerd/containerd.sock
[ ${#sock} -lt 100 ] || { echo "kube/up: DIR is too long for containerd's socket path ($sock)" >&2; exit 1; }

t0=$(date +%s.%N)
elapsed() { awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }
log() { echo "kube/up: [$(elapsed) s] $*"; }

# --- a cluster left behind ---
record=/run/kiln-kube.dir
# live DIR: prints the names of DIR's recorded processes that still run.
live() { local f; for f in "$1"/pids/*; do [ -s "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null && echo "${f##*/}"; done; return 0; }
if [ -s "$record" ] && [ "$(cat "$record")" != "$dir" ]; then
  other=$(cat "$record")
  if [ -d "$other" ] && [ -n "$(live "$other")" ]; then
    owner=$(cat "$other/owner" 2>/dev/null || true)
    if [ -z "$owner" ] || kill -0 "$owner" 2>/dev/null; then
      echo "kube/up: a cluster runs under $other${owner:+ for pid $owner}: stop it first (hack/kube/down.sh $other)" >&2
      exit 1
    fi
    log "the cluster under $other outlived its owner (pid $owner): stopping it"
  fi
  [ -d "$other" ] && "$repo/hack/kube/down.sh" "$other" | sed 's/^/  /'
  rm -f "$record"
fi
if [ -n "$(ls "$dir/pids" 2>/dev/null)" ]; then
  owner=$(cat "$dir/owner" 2>/dev/null || true)
  if [ -n "$owner" ] && [ "$owner" != "${KUBE_OWNER_PID:-}" ] && kill -0 "$owner" 2>/dev/null && [ -n "$(live "$dir")" ]; then
    echo "kube/up: the cluster under $dir runs for pid $owner: stop it first (hack/kube/down.sh $dir)" >&2
    exit 1
  fi
  log "stopping the cluster left under $dir"
  "$repo/hack/kube/down.sh" "$dir" | sed 's/^/  /'
fi
for port in $etcd_port $api_port $kubelet_port; do
  if [ -n "$(ss -Hltn "sport = :$port")" ]; then
    echo "kube/up: port $port is taken (a cluster up.sh does not know of?): $(ss -Hltnp "sport = :$port" | awk '{print $NF}')" >&2
    exit 1
  fi
done
rm -f "$dir/owner"
mkdir -p "$dir"/{pids,logs,pki,etcd,containerd,kubelet,cni/net.d,cni/ipam,images,pv}
echo "$dir" >"$record"

# --- the owner's watchdog ---
if [ -n "${KUBE_OWNER_PID:-}" ]; then
  kill -0 "$KUBE_OWNER_PID" 2>/dev/null || { echo "kube/up: KUBE_OWNER_PID $KUBE_OWNER_PID is not running" >&2; exit 1; }
  echo "$KUBE_OWNER_PID" >"$dir/owner"
  # It waits for this script too, so it never stops a cluster still being started. Its own
  # session: a ^C to the owner's terminal does not reach it, and its down.sh runs to the end.
  setsid bash -c '
    while kill -0 "$1" 2>/dev/null || kill -0 "$2" 2>/dev/null; do sleep 1; done
    rm -f "$3/pids/watchdog"
    echo "kube/watchdog: $(date -u +%FT%TZ): owner pid $1 is gone: hack/kube/down.sh $3"
    exec "$4" "$3"' kube-watchdog "$KUBE_OWNER_PID" $$ "$dir" "$repo/hack/kube/down.sh" \
    </dev/null >>"$dir/logs/watchdog.log" 2>&1 &
  echo $! >"$dir/pids/watchdog"
  log "watchdog (pid $!) stops the cluster when pid $KUBE_OWNER_PID is gone"
fi

# start NAME CMD...: runs CMD in the background, output to DIR/logs/NAME.log, PID to DIR/pids/NAME.
start() {
  local name=$1; shift
  if [ -s "$dir/pids/$name" ] && kill -0 "$(cat "$dir/pids/$name")" 2>/dev/null; then
    echo "kube/up: $name is already running (pid $(cat "$dir/pids/$name")); run hack/kube/down.sh $dir first" >&2; exit 1
  fi
  "$@" >"$dir/logs/$name.log" 2>&1 &
  echo $! >"$dir/pids/$name"
}
# wait_for WHAT SECONDS CMD...: retries CMD every half second; on timeout shows the logs' tails.
wait_for() {
  local what=$1 secs=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then
      echo "kube/up: timed out after ${secs}s waiting for $what; logs in $dir/logs:" >&2
      tail -n 15 "$dir"/logs/*.log >&2
      exit 1
    fi
    sleep 0.5
  done
  log "$what"
}

# The address the cluster advertises, on a port-less bridge: reachable from this host only.
if ! ip link show "$iface" >/dev/null 2>&1; then
  ip link add "$iface" type bridge
fi
ip link set "$iface" up
ip addr show dev "$iface" | grep -q " $addr/" || ip addr add "$addr/32" dev "$iface"

# --- certificates and tokens (openssl) ---
pki=$dir/pki
if [ ! -s "$pki/ca.crt" ]; then
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=kiln-kube-ca" \
    -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
  # cert NAME SUBJECT EXT: a key and a certificate signed by the CA.
  cert() {
    openssl req -newkey rsa:2048 -nodes -subj "$2" -keyout "$pki/$1.key" -out "$pki/$1.csr" 2>/dev/null
    printf '%s\n' "$3" >"$pki/$1.ext"
    openssl x509 -req -in "$pki/$1.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial -days 30 \
      -extfile "$pki/$1.ext" -out "$pki/$1.crt" 2>/dev/null
  }
  cert apiserver "/CN=kube-apiserver" \
    "subjectAltName=IP:$addr,IP:127.0.0.1,IP:$svc_ip,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:localhost
extendedKeyUsage=serverAuth"
  # The apiserver's client certificate to the kubelet (logs, exec, port-forward).
  cert apiserver-kubelet "/O=system:masters/CN=kube-apiserver-kubelet-client" "extendedKeyUsage=clientAuth"
  # The kubelet's serving certificate, so the apiserver can verify it.
  cert kubelet "/CN=$node" "subjectAltName=IP:$addr,DNS:$node
extendedKeyUsage=serverAuth"
  openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
  # Static bearer tokens: token,user,uid,"groups". Identities the default RBAC roles know.
  tok() { openssl rand -hex 16; }
  admin_token=$(tok) kubelet_token=$(tok) kcm_token=$(tok) sched_token=$(tok)
  cat >"$pki/tokens.csv" <<EOF
$admin_token,kiln-admin,kiln-admin,"system:masters"
$kubelet_token,system:node:$node,system:node:$node,"system:nodes"
$kcm_token,system:kube-controller-manager,system:kube-controller-manager
$sched_token,system:kube-scheduler,system:kube-scheduler
EOF
  chmod 600 "$pki"/*.key "$pki/tokens.csv"
fi
token_of() { awk -F, -v u="$1" '$2==u{print $1}' "$pki/tokens.csv"; }
kubeconfig() { # kubeconfig FILE USER
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: kiln-kube
  cluster: {server: "https://$addr:$api_port", certificate-authority: "$pki/ca.crt"}
users:
- name: $2
  user: {token: "$(token_of "$2")"}
contexts:
- name: kiln-kube
  context: {cluster: kiln-kube, user: "$2"}
current-context: kiln-kube
EOF
  chmod 600 "$1"
}
kubeconfig "$dir/kubeconfig" kiln-admin
kubeconfig "$dir/kubelet.kubeconfig" "system:node:$node"
kubeconfig "$dir/kcm.kubeconfig" system:kube-controller-manager
kubeconfig "$dir/scheduler.kubeconfig" system:kube-scheduler
kc() { kubectl --kubeconfig "$dir/kubeconfig" "$@"; }
log "certificates and kubeconfigs in $dir"

# --- etcd ---
start etcd "$kbin/etcd" --name kiln-kube --data-dir "$dir/etcd" \
  --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$((etcd_port + 10))" --initial-advertise-peer-urls "http://127.0.0.1:$((etcd_port + 10))" \
  --initial-cluster "kiln-kube=http://127.0.0.1:$((etcd_port + 10))" --listen-metrics-urls "http://127.0.0.1:$((etcd_port + 20))"
wait_for "etcd is healthy" 30 curl -fsS "http://127.0.0.1:$((etcd_port + 20))/health"

# --- kube-apiserver ---
start kube-apiserver "$kbin/kube-apiserver" \
  --etcd-servers "http://127.0.0.1:$etcd_port" \
  --advertise-address "$addr" --bind-address "$addr" --secure-port "$api_port" \
  --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
  --client-ca-file "$pki/ca.crt" --token-auth-file "$pki/tokens.csv" \
  --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
  --service-cluster-ip-range "$svc_cidr" \
  --service-account-issuer "https://kubernetes.default.svc" \
  --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
  --kubelet-client-certificate "$pki/apiserver-kubelet.crt" --kubelet-client-key "$pki/apiserver-kubelet.key" \
  --kubelet-certificate-authority "$pki/ca.crt" --kubelet-preferred-address-types InternalIP \
  --allow-privileged=true --anonymous-auth=false --profiling=false
wait_for "kube-apiserver is ready" 90 curl -fsS --cacert "$pki/ca.crt" -H "Authorization: Bearer $(token_of kiln-admin)" "https://$addr:$api_port/readyz"

# --- controller manager and scheduler (their own serving ports on loopback) ---
# Dynamic volumes: the controller manager's hostPath provisioner makes /tmp/hostpath_pv/<uuid> (a
# fixed path in k8s.io/kubernetes pkg/volume/hostpath) and its deleter removes only under /tmp/.
# /tmp/hostpath_pv is made a symlink to DIR/pv, so the volumes live under DIR; down.sh removes it.
if [ -L /tmp/hostpath_pv ] || rmdir /tmp/hostpath_pv 2>/dev/null || [ ! -e /tmp/hostpath_pv ]; then
  ln -sfn "$dir/pv" /tmp/hostpath_pv
else
  log "warning: /tmp/hostpath_pv is a directory with files in it: dynamic volumes go there, not under $dir/pv"
fi
start kube-controller-manager "$kbin/kube-controller-manager" \
  --kubeconfig "$dir/kcm.kubeconfig" --authentication-kubeconfig "$dir/kcm.kubeconfig" --authorization-kubeconfig "$dir/kcm.kubeconfig" \
  --bind-address 127.0.0.1 --secure-port 20257 \
  --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
  --service-cluster-ip-range "$svc_cidr" --use-service-account-credentials=true \
  --controllers '*,-cloud-node-lifecycle' --leader-elect=false --profiling=false \
  --enable-hostpath-provisioner
start kube-scheduler "$kbin/kube-scheduler" \
  --kubeconfig "$dir/scheduler.kubeconfig" --authentication-kubeconfig "$dir/scheduler.kubeconfig" --authorization-kubeconfig "$dir/scheduler.kubeconfig" \
  --bind-address 127.0.0.1 --secure-port 20259 --leader-elect=false --profiling=false

# --- containerd: CRI with runc = bin/runc and a bridge CNI network ---
cat >"$dir/cni/net.d/10-kiln-kube.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "kiln-kube",
  "plugins": [
    {
      "type": "bridge", "bridge": "$bridge", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": {"type": "host-local", "dataDir": "$dir/cni/ipam", "ranges": [[{"subnet": "$pod_cidr"}]], "routes": [{"dst": "0.0.0.0/0"}]}
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
cat >"$dir/containerd/config.toml" <<EOF
version = 3
root = "$dir/containerd/root"
state = "$dir/containerd/state"
# NRI would open /var/run/nri/nri.sock, shared with any other containerd on the host.
disabled_plugins = ["io.containerd.nri.v1.nri"]

[grpc]
  address = "$sock"
[ttrpc]
  address = "$sock.ttrpc"
[debug]
  address = "$sock.debug"
[metrics]
  address = ""

[plugins.'io.containerd.internal.v1.opt']
  path = "$dir/containerd/opt"
[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "localhost/kiln/pause:1"
[plugins.'io.containerd.cri.v1.runtime']
  # The kubelet asks for oom_score_adj -998 for sandboxes; lowering it below the parent's needs a
  # privilege this host denies even to root ("failed to update /proc/self/oom_score_adj:
  # Permission denied" from runc init). Clamp to containerd's own value instead.
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "$repo/bin/runc"
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "$dir/cni/net.d"
    max_conf_num = 1
EOF
# bin/kube first on PATH: containerd looks the shim up there.
start containerd env PATH="$kbin:$PATH" "$kbin/containerd" --config "$dir/containerd/config.toml"
ctr() { "$kbin/ctr" --address "$sock" "$@"; }
wait_for "containerd is serving" 30 ctr version

# --- local images: the pause sandbox and busybox ---
img=$dir/images
rm -rf "$img/pause-root" "$img/busybox-root"
mkdir -p "$img/pause-root" "$img/busybox-root/bin" "$img/busybox-root/tmp" "$img/busybox-root/etc"
cp "$kbin/pause" "$img/pause-root/pause"
"$kbin/ociarchive" -name localhost/kiln/pause:1 -entrypoint /pause -o "$img/pause.tar" "$img/pause-root"
cp /bin/busybox "$img/busybox-root/bin/busybox"
"$img/busybox-root/bin/busybox" --install -s "$img/busybox-root/bin" 2>/dev/null || true
# busybox --install writes links to the busybox it ran from; point them at the image's own.
for l in "$img"/busybox-root/bin/*; do [ -L "$l" ] && ln -sf busybox "$l"; done
echo "root:x:0:0:root:/root:/bin/sh" >"$img/busybox-root/etc/passwd"
echo "root:x:0:" >"$img/busybox-root/etc/group"
"$kbin/ociarchive" -name localhost/kiln/busybox:1 -cmd sh -o "$img/busybox.tar" "$img/busybox-root"
for i in pause busybox; do
  ctr -n k8s.io images import "$img/$i.tar" >>"$dir/logs/images.log" 2>&1
done
log "imported localhost/kiln/pause:1 and localhost/kiln/busybox:1 into containerd"

# --- kubelet ---
cat >"$dir/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: "$addr"
port: $kubelet_port
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 20248
tlsCertFile: "$pki/kubelet.crt"
tlsPrivateKeyFile: "$pki/kubelet.key"
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$pki/ca.crt"}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
failSwapOn: false
failCgroupV1: false
containerRuntimeEndpoint: "unix://$sock"
imageServiceEndpoint: "unix://$sock"
resolvConf: /etc/resolv.conf
# The disk is shared with other work: don't evict or GC images because of it.
evictionHard: {"nodefs.available": "1%", "imagefs.available": "1%", "memory.available": "100Mi"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
EOF
start kubelet "$kbin/kubelet" --config "$dir/kubelet/config.yaml" --kubeconfig "$dir/kubelet.kubeconfig" \
  --root-dir "$dir/kubelet/root" --hostname-override "$node" --node-ip "$addr"
wait_for "node $node is registered" 90 kc get node "$node"
wait_for "node $node is Ready" 120 kc wait --for=condition=Ready "node/$node" --timeout=1s
# The default service account must exist before pods are admitted.
wait_for "default service account exists" 60 kc get serviceaccount default -n default

# --- the default StorageClass: hostPath volumes the controller manager provisions ---
kc apply -f - >/dev/null <<EOF
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: kiln-local
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: kubernetes.io/host-path
reclaimPolicy: Delete
volumeBindingMode: Immediate
EOF
log "default StorageClass kiln-local (hostPath volumes under $dir/pv, deleted with their claim)"

# --- what tests need to know about the cluster ---
# KUBE_HOST_CIDR: where this host's own connections to pod IPs come from (the CNI bridge's
# gateway address), for NetworkPolicy ingress ipBlocks that let the host in.
cat >"$dir/cluster.env" <<EOF
KUBE_ADDR=$addr
KUBE_API_PORT=$api_port
KUBE_POD_CIDR=$pod_cidr
KUBE_SERVICE_CIDR=$svc_cidr
KUBE_HOST_CIDR=${pod_cidr%.*}.1/32
KUBE_NODE=$node
KUBE_BRIDGE=$bridge
KUBE_STORAGE_CLASS=kiln-local
EOF

# --- NetworkPolicy enforcement ---
"$repo/hack/kube/netpol.sh" "$dir"
log "NetworkPolicy engine running"
log "cluster up in $(elapsed) s: export KUBECONFIG=$dir/kubeconfig"
