#!/usr/bin/env bash
# Proves the cluster hack/kube/up.sh started under DIR runs real pods:
#   1. a busybox pod runs and its log reads back (and how long scheduled -> running took);
#   2. two pods in two namespaces reach each other by pod IP (busybox httpd + wget);
#   3. whether a NetworkPolicy is enforced: a default-deny ingress policy on the server's
#      namespace, then the same request again (Debian's bridge CNI enforces nothing; with
#      hack/kube/netpol.sh DIR running, kube-network-policies does);
#   4. a PersistentVolumeClaim bound to a hostPath PersistentVolume keeps a file across the
#      deletion of the pod that wrote it.
# Prints one "prove: PASS|FAIL|INFO ..." line per check; exits non-zero if a check failed.
# Leaves nothing behind: its namespaces and the PV are deleted at the end.
#
# Usage: hack/kube/prove.sh DIR
set -uo pipefail
[ $# -eq 1 ] || { echo "usage: hack/kube/prove.sh DIR" >&2; exit 2; }
dir=$(cd "$1" && pwd) || exit 1
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
  kubectl delete pv kiln-prove-pv --ignore-not-found --wait=false >/dev/null 2>&1
}
trap cleanup EXIT
# A previous run's namespaces may still be terminating.
kubectl delete namespace kiln-prove-a kiln-prove-b --ignore-not-found --wait=true --timeout=120s >/dev/null 2>&1
kubectl delete pv kiln-prove-pv --ignore-not-found --wait=true --timeout=60s >/dev/null 2>&1
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

# 3. NetworkPolicy: deny all ingress to kiln-prove-a, then try again.
if [ "$(fetch)" = from-server ]; then
kubectl apply -f - >/dev/null <<EOF
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-ingress, namespace: kiln-prove-a}
spec:
  podSelector: {}
  policyTypes: [Ingress]
EOF
sleep 2
out=$(fetch)
if [ "$out" = from-server ]; then
  info "NetworkPolicy NOT enforced: with deny-ingress on kiln-prove-a the client still fetched from the server (no policy engine running)"
else
  pass "NetworkPolicy enforced: deny-ingress on kiln-prove-a blocked the client ($out)"
  # Allowing the client's namespace opens it again.
  kubectl apply -f - >/dev/null <<EOF
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-b, namespace: kiln-prove-a}
spec:
  podSelector: {matchLabels: {app: server}}
  policyTypes: [Ingress]
  ingress:
  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kiln-prove-b}}}]
EOF
  sleep 2
  out=$(fetch)
  [ "$out" = from-server ] && pass "an allow policy for kiln-prove-b opened it again" || fail "the allow policy for kiln-prove-b did not open it: $out"
fi
fi

# 4. A PVC on a hostPath PV keeps its data across the pod's deletion.
pv_dir=$dir/pv/kiln-prove
rm -rf "$pv_dir"; mkdir -p "$pv_dir"
kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: PersistentVolume
metadata: {name: kiln-prove-pv}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: kiln-local
  hostPath: {path: "$pv_dir", type: Directory}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: state, namespace: kiln-prove-a}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: kiln-local
  resources: {requests: {storage: 1Gi}}
EOF
vol='  volumes:
  - name: state
    persistentVolumeClaim: {claimName: state}'
mnt='    volumeMounts: [{name: state, mountPath: /state}]'
if kubectl wait --for=jsonpath='{.status.phase}'=Bound pvc/state -n kiln-prove-a --timeout=30s >/dev/null; then
  pod kiln-prove-a writer "date > /state/proof && cat /state/proof && sleep 3600" "$mnt
$vol"
  kubectl wait --for=condition=Ready pod/writer -n kiln-prove-a --timeout=60s >/dev/null
  sleep 1
  written=$(kubectl logs writer -n kiln-prove-a)
  kubectl delete pod writer -n kiln-prove-a --wait=true >/dev/null
  pod kiln-prove-a reader "cat /state/proof; sleep 3600" "$mnt
$vol"
  kubectl wait --for=condition=Ready pod/reader -n kiln-prove-a --timeout=60s >/dev/null
  sleep 1
  read_back=$(kubectl logs reader -n kiln-prove-a)
  if [ -n "$written" ] && [ "$written" = "$read_back" ]; then
    pass "PVC state (hostPath PV $pv_dir) kept '$written' across the writer pod's deletion"
  else
    fail "PVC state: wrote '$written', read back '$read_back'"
  fi
else
  fail "PVC state did not bind: $(kubectl get pvc state -n kiln-prove-a 2>&1 | tail -1)"
fi

[ $failed = 0 ] && echo "prove: all checks passed" || echo "prove: some checks FAILED"
exit $failed
