#!/usr/bin/env bash
# Proves the cluster hack/kube/up.sh started under DIR runs real pods:
#   1. a busybox pod runs and its log reads back (and how long scheduled -> running took);
#   2. two pods in two namespaces reach each other by pod IP (busybox httpd + nc);
#   3. NetworkPolicy is enforced (hack/kube/netpol.sh, which up.sh runs):
#      a. a default-deny ingress policy on the server's namespace blocks the other namespace's
#         client, and an allow policy for that namespace opens it again;
#      b. an ingress policy allowing only an ipBlock of KUBE_HOST_CIDR (DIR/cluster.env) lets the
#         host in (as root, whom the engine never filters, and as nobody, whom it does) and keeps
#         the client out; an ipBlock elsewhere keeps nobody on the host out;
#      c. an egress policy to 0.0.0.0/0 except 10.0.0.0/8 keeps the client from the server pod
#         and from the apiserver (KUBE_ADDR:KUBE_API_PORT), which it reached before;
#   4. dynamic volumes: a StatefulSet's volumeClaimTemplate binds by itself (the default
#      StorageClass kiln-local), the file one pod wrote is read by the pod that replaces it, the
#      volume is a directory under DIR/pv, and deleting the claim deletes the volume and its data.
# Prints one "prove: PASS|FAIL|INFO ..." line per check; exits non-zero if a check failed.
# Leaves nothing behind: its namespaces (and with them the volume) are deleted at the end.
#
# Usage: hack/kube/prove.sh DIR
set -uo pipefail
[ $# -eq 1 ] || { echo "usage: hack/kube/prove.sh DIR" >&2; exit 2; }
dir=$(cd "$1" && pwd) || exit 1
export PATH="$(cd "$(dirname "$0")/../.." && pwd)/bin/kube:$PATH" # its kubectl
# shellcheck source=/dev/null
. "$dir/cluster.env" # KUBE_ADDR, KUBE_API_PORT, KUBE_HOST_CIDR (hack/kube/up.sh)
export KUBECONFIG=$dir/kubeconfig
img=localhost/kiln/busybox:1
failed=0
pass() { echo "prove: PASS $*"; }
fail() { echo "prove: FAIL $*"; failed=1; }
info() { echo "prove: INFO $*"; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", b-a}'; }

# pod NS NAME COMMAND [EXTRA-SPEC-YAML]: a busybox pod running sh -c COMMAND.
pod() {
  kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $2, namespace: $1, labels: {app: $2}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: $img
    imagePullPolicy: Never
    command: ["sh", "-c", "$3"]
${4:-}
EOF
}
cleanup() {
  kubectl delete namespace kiln-prove-a kiln-prove-b --ignore-not-found --wait=false >/dev/null 2>&1
  }
trap cleanup EXIT
# A previous run's namespaces may still be terminating.
kubectl delete namespace kiln-prove-a kiln-prove-b --ignore-not-found --wait=true --timeout=120s >/dev/null 2>&1
for ns in kiln-prove-a kiln-prove-b; do kubectl create namespace "$ns" >/dev/null; done
# Wait for the namespaces' default service accounts (pods are refused before them).
for ns in kiln-prove-a kiln-prove-b; do
  for _ in $(seq 40); do kubectl get sa default -n "$ns" >/dev/null 2>&1 && break; sleep 0.25; done
done

# 1. A pod runs; its log reads back; scheduled -> running, timed by polling the API every 0.1 s.
t_apply=$(now)
pod kiln-prove-a hello "echo hello; sleep 3600"
t_sched="" t_run=""
for _ in $(seq 600); do
  IFS=, read -r nodename phase < <(kubectl get pod hello -n kiln-prove-a -o jsonpath='{.spec.nodeName},{.status.phase}{"\n"}' 2>/dev/null)
  [ -z "$t_sched" ] && [ -n "${nodename:-}" ] && t_sched=$(now)
  if [ "${phase:-}" = Running ]; then t_run=$(now); break; fi
  sleep 0.1
done
if [ -n "$t_run" ] && [ "$(kubectl logs hello -n kiln-prove-a)" = hello ]; then
  pass "pod hello ran and logged 'hello': apply -> scheduled $(secs "$t_apply" "$t_sched") s, scheduled -> running $(secs "$t_sched" "$t_run") s (API polled every 0.1 s)"
  kubectl get pod hello -n kiln-prove-a -o jsonpath='{range .status.conditions[*]}{.type}={.lastTransitionTime} {end}{"\n"}' | sed 's/^/prove: INFO hello conditions: /'
else
  fail "pod hello did not run or log hello: $(kubectl get pod hello -n kiln-prove-a -o wide 2>&1 | tail -1)"
fi

# 2. Pod to pod by IP, across namespaces.
pod kiln-prove-a server "mkdir -p /www && echo from-server > /www/index.html && exec httpd -f -p 8080 -h /www"
pod kiln-prove-b client "sleep 3600"
kubectl wait --for=condition=Ready pod/server -n kiln-prove-a --timeout=60s >/dev/null
kubectl wait --for=condition=Ready pod/client -n kiln-prove-b --timeout=60s >/dev/null
server_ip=$(kubectl get pod server -n kiln-prove-a -o jsonpath='{.status.podIP}')
client_ip=$(kubectl get pod client -n kiln-prove-b -o jsonpath='{.status.podIP}')
# Debian's busybox-static wget segfaults (exit 139, on the host too): speak HTTP through nc.
fetch() {
  kubectl exec -n kiln-prove-b client -- sh -c "printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 3 $server_ip 8080 | tail -n 1" 2>&1
}
out=$(fetch)
if [ "$out" = from-server ]; then
  pass "client ($client_ip, ns kiln-prove-b) fetched http://$server_ip:8080/ from server (ns kiln-prove-a)"
else
  fail "client could not reach server at $server_ip:8080: $out"
fi

# 3. NetworkPolicy.
policy() { kubectl apply -f - >/dev/null; sleep 2; } # the engine sees it within a second
unpolicy() { kubectl delete networkpolicy --all -n "$1" >/dev/null; sleep 2; }
# host_fetch [USER]: the host fetches from the server, as root or as USER.
host_fetch() {
  local c="printf 'GET / HTTP/1.0\r\n\r\n' | busybox nc -w 3 $server_ip 8080 | tail -n 1"
  if [ -n "${1:-}" ]; then setpriv --reuid="$1" --regid="$1" --clear-groups sh -c "$c" 2>&1; else sh -c "$c" 2>&1; fi
}
# 3a. Deny all ingress to kiln-prove-a, then allow kiln-prove-b.
policy <<EOF
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-ingress, namespace: kiln-prove-a}
spec:
  podSelector: {}
  policyTypes: [Ingress]
EOF
out=$(fetch)
if [ "$out" = from-server ]; then
  fail "NetworkPolicy NOT enforced: with deny-ingress on kiln-prove-a the client still fetched from the server"
else
  pass "NetworkPolicy enforced: deny-ingress on kiln-prove-a blocked the client ($out)"
fi
policy <<EOF
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-b, namespace: kiln-prove-a}
spec:
  podSelector: {matchLabels: {app: server}}
  policyTypes: [Ingress]
  ingress:
  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kiln-prove-b}}}]
EOF
out=$(fetch)
[ "$out" = from-server ] && pass "an allow policy for kiln-prove-b opened it again" || fail "the allow policy for kiln-prove-b did not open it: $out"
unpolicy kiln-prove-a

# 3b. Ingress only from the host's side of the pod network.
policy <<EOF
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: only-host, namespace: kiln-prove-a}
spec:
  podSelector: {matchLabels: {app: server}}
  policyTypes: [Ingress]
  ingress:
  - from: [{ipBlock: {cidr: $KUBE_HOST_CIDR}}]
EOF
out=$(fetch); as_root=$(host_fetch); as_nobody=$(host_fetch 65534)
if [ "$out" != from-server ] && [ "$as_root" = from-server ] && [ "$as_nobody" = from-server ]; then
  pass "ingress only from ipBlock $KUBE_HOST_CIDR: the host fetched (as root and as nobody), the client did not ($out)"
else
  fail "ingress only from ipBlock $KUBE_HOST_CIDR: client '$out', host as root '$as_root', as nobody '$as_nobody'"
fi
policy <<EOF
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: only-host, namespace: kiln-prove-a}
spec:
  podSelector: {matchLabels: {app: server}}
  policyTypes: [Ingress]
  ingress:
  - from: [{ipBlock: {cidr: 192.0.2.0/24}}]
EOF
as_root=$(host_fetch); as_nobody=$(host_fetch 65534)
if [ "$as_nobody" != from-server ] && [ "$as_root" = from-server ]; then
  pass "ingress only from ipBlock 192.0.2.0/24: nobody on the host was kept out ($as_nobody), root was not (exempt)"
else
  fail "ingress only from ipBlock 192.0.2.0/24: host as root '$as_root', as nobody '$as_nobody'"
fi
unpolicy kiln-prove-a

# 3c. Egress anywhere except 10.0.0.0/8, from the client.
api_reach() { kubectl exec -n kiln-prove-b client -- sh -c "nc -w 3 $KUBE_ADDR $KUBE_API_PORT </dev/null >/dev/null 2>&1 && echo open || echo closed" 2>&1; }
before=$(api_reach)
policy <<EOF
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: no-private, namespace: kiln-prove-b}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8]}}]
EOF
out=$(fetch); after=$(api_reach)
if [ "$before" = open ] && [ "$after" = closed ] && [ "$out" != from-server ]; then
  pass "egress to 0.0.0.0/0 except 10.0.0.0/8: the client reached neither the server pod ($out) nor the apiserver $KUBE_ADDR:$KUBE_API_PORT (open before)"
else
  fail "egress except 10.0.0.0/8: server '$out', apiserver before '$before', after '$after'"
fi
unpolicy kiln-prove-b
[ "$(fetch)" = from-server ] && [ "$(api_reach)" = open ] && pass "without the policy the client reaches both again" \
  || fail "without the policy the client does not reach the server or the apiserver"

# 4. Dynamic volumes: a StatefulSet's claim, kept across its pod's replacement, deleted with the claim.
kubectl apply -f - >/dev/null <<EOF
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: state, namespace: kiln-prove-a}
spec:
  serviceName: state
  replicas: 1
  selector: {matchLabels: {app: state}}
  template:
    metadata: {labels: {app: state}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: c
        image: $img
        imagePullPolicy: Never
        command: [sh, -c, "[ -f /data/proof ] || cat /proc/sys/kernel/random/uuid > /data/proof; cat /data/proof; exec sleep 3600"]
        volumeMounts: [{name: data, mountPath: /data}]
  volumeClaimTemplates:
  - metadata: {name: data}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {requests: {storage: 1Gi}}
EOF
t_claim=$(now)
if kubectl wait --for=jsonpath='{.status.phase}'=Bound pvc/data-state-0 -n kiln-prove-a --timeout=60s >/dev/null 2>&1; then
  t_bound=$(now)
  pv=$(kubectl get pvc data-state-0 -n kiln-prove-a -o jsonpath='{.spec.volumeName}')
  class=$(kubectl get pvc data-state-0 -n kiln-prove-a -o jsonpath='{.spec.storageClassName}')
  path=$(kubectl get pv "$pv" -o jsonpath='{.spec.hostPath.path}')
  real=$(readlink -f "$path")
  pass "claim data-state-0 bound by itself in $(secs "$t_claim" "$t_bound") s: class $class, PV $pv, hostPath $path (-> $real)"
  case "$real" in "$dir"/pv/*) pass "the volume is under $dir/pv" ;; *) fail "the volume $real is not under $dir/pv" ;; esac
  kubectl wait --for=condition=Ready pod/state-0 -n kiln-prove-a --timeout=60s >/dev/null
  written=$(kubectl logs state-0 -n kiln-prove-a)
  uid=$(kubectl get pod state-0 -n kiln-prove-a -o jsonpath='{.metadata.uid}')
  kubectl delete pod state-0 -n kiln-prove-a --wait=true >/dev/null
  for _ in $(seq 120); do
    nuid=$(kubectl get pod state-0 -n kiln-prove-a -o jsonpath='{.metadata.uid}' 2>/dev/null)
    [ -n "$nuid" ] && [ "$nuid" != "$uid" ] && break; sleep 0.5
  done
  kubectl wait --for=condition=Ready pod/state-0 -n kiln-prove-a --timeout=60s >/dev/null
  read_back=$(kubectl logs state-0 -n kiln-prove-a)
  if [ -n "$written" ] && [ "$written" = "$read_back" ]; then
    pass "the replacement pod state-0 read '$read_back', written by the pod it replaced"
  else
    fail "volume: wrote '$written', the replacement pod read '$read_back'"
  fi
  kubectl delete statefulset state -n kiln-prove-a --wait=true >/dev/null
  kubectl wait --for=delete pod/state-0 -n kiln-prove-a --timeout=60s >/dev/null 2>&1
  kubectl delete pvc data-state-0 -n kiln-prove-a --wait=true --timeout=60s >/dev/null
  if kubectl wait --for=delete "pv/$pv" --timeout=60s >/dev/null 2>&1 && [ ! -e "$real" ]; then
    pass "deleting the claim deleted PV $pv and its directory $real"
  else
    fail "after deleting the claim: PV $(kubectl get pv "$pv" -o jsonpath='{.status.phase}' 2>&1), directory $( [ -e "$real" ] && echo still there || echo gone)"
  fi
else
  fail "claim data-state-0 did not bind: $(kubectl get pvc data-state-0 -n kiln-prove-a 2>&1 | tail -1); $(kubectl get events -n kiln-prove-a --field-selector involvedObject.name=data-state-0 2>&1 | tail -2)"
fi

[ $failed = 0 ] && echo "prove: all checks passed" || echo "prove: some checks FAILED"
exit $failed
