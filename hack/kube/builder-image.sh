#!/usr/bin/env bash
# Builds the builder image (hack/kube/builder.Dockerfile) with kiln itself and imports it into the
# containerd of the cluster hack/kube/up.sh started under DIR, as localhost/kiln/builder:dev.
#
# kiln: a `kiln serve` of its own (data DIR/kiln, loopback port 17420, PID in DIR/pids so
# hack/kube/down.sh stops it), a project "kube-builder", then
#   kiln build -f hack/kube/builder.Dockerfile -o type=oci,dest=DIR/images/builder.tar,name=… CONTEXT
# The context (DIR/builder-ctx) is assembled here from bin/ (buildkitd, buildctl, runc: hack/setup.sh),
# Debian's busybox-static, CNI plugins and git, and the shared libraries those binaries link.
#
# Usage: hack/kube/builder-image.sh DIR
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: hack/kube/builder-image.sh DIR" >&2; exit 2; }
repo=$(cd "$(dirname "$0")/../.." && pwd)
dir=$(cd "$1" && pwd)
image=localhost/kiln/builder:dev
t0=$SECONDS

# --- the context ---
ctx=$dir/builder-ctx
rm -rf "$ctx"; mkdir -p "$ctx/bin" "$ctx/cni" "$ctx/lib"
cp /bin/busybox "$ctx/busybox"
cp "$repo/bin/buildkitd" "$repo/bin/buildctl" "$repo/bin/runc" "$ctx/bin/"
for p in bridge host-local loopback firewall; do cp "/usr/lib/cni/$p" "$ctx/cni/"; done
cp "$repo/hack/kube/buildkitd.toml" "$ctx/"
# git, which BuildKit's git source runs for builds from git contexts: Debian's, with its HTTP(S)
# helper and the CA certificates it checks servers against.
mkdir -p "$ctx/git/bin" "$ctx/git/core" "$ctx/certs"
cp /usr/bin/git "$ctx/git/bin/"
cp /usr/lib/git-core/git-remote-http "$ctx/git/core/git-remote-http"
cp /usr/lib/git-core/git-remote-http "$ctx/git/core/git-remote-https"
cp -L /etc/ssl/certs/ca-certificates.crt "$ctx/certs/"
# The libraries every binary here links, resolved on this host (glibc's loader goes to /lib64).
for lib in $(ldd "$ctx"/bin/* "$ctx"/cni/* "$ctx"/git/bin/* "$ctx"/git/core/* 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $3}' | sort -u); do
  cp -L "$lib" "$ctx/lib/"
done
cp -L /lib64/ld-linux-x86-64.so.2 "$ctx/"

# --- kiln serve, a project ---
kiln=$repo/bin/kiln
export KILN_API_URL=http://127.0.0.1:17420
mkdir -p "$dir/kiln" "$dir/pids" "$dir/logs"
# kiln serve (and the builder it starts) run only while this script does: it stops them however
# it ends; its own PID is in DIR/pids too, so hack/kube/down.sh (the owner's watchdog) ends it
# with the cluster. SIGPIPE: the reader of its output (a test process) died.
stop_serve() {
  local pid; pid=$(cat "$dir/pids/kiln-serve" 2>/dev/null) || return 0
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  rm -f "$dir/pids/kiln-serve"
}
trap 'stop_serve; rm -f "$dir/pids/builder-image"' EXIT
trap 'exit 143' TERM INT
trap 'exit 141' PIPE
echo $$ >"$dir/pids/builder-image"
if ! { [ -s "$dir/pids/kiln-serve" ] && kill -0 "$(cat "$dir/pids/kiln-serve")" 2>/dev/null; }; then
  # Its builders' RUN-step networks next to the cluster's ranges, clear of the tests' kiln servers
  # (10.128.0.0/9) and of the default 10.200.0.0/16 a developer's kiln serve may hold.
  "$kiln" serve --data "$dir/kiln" --addr 127.0.0.1:17420 --admin-addr "" --builder-subnets 10.216.0.0/20 \
    </dev/null >"$dir/logs/kiln-serve.log" 2>&1 &
  echo $! >"$dir/pids/kiln-serve"
fi
for _ in $(seq 60); do curl -fsS "$KILN_API_URL/healthz" >/dev/null 2>&1 && break; sleep 0.5; done
curl -fsS "$KILN_API_URL/healthz" >/dev/null || { tail -20 "$dir/logs/kiln-serve.log" >&2; exit 1; }
export KILN_TOKEN=$(cat "$dir/kiln/admin.token")
if [ ! -s "$dir/kiln/builder-project" ]; then
  "$kiln" projects create kube-builder --quiet >"$dir/kiln/builder-project"
fi
export KILN_PROJECT_ID=$(cat "$dir/kiln/builder-project")

# --- build and import ---
mkdir -p "$dir/images"
"$kiln" build -f "$repo/hack/kube/builder.Dockerfile" \
  -o "type=oci,dest=$dir/images/builder.tar,name=$image" "$ctx"
"$repo/bin/kube/ctr" --address "$dir/containerd/containerd.sock" -n k8s.io images import "$dir/images/builder.tar" \
  >>"$dir/logs/images.log" 2>&1
# kiln serve (and the builder it started) are not needed any more: free the two cores.
stop_serve
echo "kube/builder-image: $image built by kiln and imported in $((SECONDS - t0)) s"
