#!/usr/bin/env bash
# Installs what kiln needs on Debian 12 and builds its binaries into bin/:
#   buildkitd + buildctl v0.34.2 (from tools/buildkit/go.mod), runc v1.5.3 with seccomp (from
#   tools/runc/go.mod; the builders' container runtime: kiln puts bin/ first on buildkitd's PATH,
#   so Debian's older runc, which docker.io pulls in, is not used by builders), kiln, and with
#   --tests versitygw (an S3 server for tests, from tools/versitygw/go.mod), Debian's
#   clickhouse-server (18.16, for the ClickHouse export's tests), postgresql (the Postgres
#   store's tests), chromium (the headless browser the dashboard's tests drive) and nodejs; busybox-static
#   (local base images), the CNI plugins and iptables (bridge networking for RUN steps),
#   libseccomp-dev + pkg-config (to build runc); QEMU binfmt emulation and
#   bin/busybox-<foreign arch> for multi-platform builds (setup-multiplatform.sh).
# The daemons' versions are the ones pinned in their tool modfiles, at or above the security
# floors kiln doctor checks (BuildKit >= v0.34.2, runc >= 1.5.0 built with seccomp).
# Safe to run again; it only rebuilds what is missing or stale.
#
# Usage: hack/setup.sh [--tests]
#   --tests  also install what only the tests need (versitygw, clickhouse-server, postgresql,
#            chromium);
#            `make test` passes it, `make demo` does not.
# The first run compiles for about 15 minutes (most of it buildkitd); each long step says
# what it builds and roughly how long it takes before it starts (Go's own "go: downloading"
# lines come first: the modules it fetches).
set -euo pipefail
cd "$(dirname "$0")/.."
export GONOSUMDB=buf.build/gen/go

for_tests=0
for arg in "$@"; do
  case "$arg" in
    --tests) for_tests=1 ;;
    *) echo "setup: unknown argument $arg (usage: hack/setup.sh [--tests])" >&2; exit 2 ;;
  esac
done

need_pkgs=()
for p in busybox-static ca-certificates make git curl gcc libc6-dev libseccomp-dev pkg-config \
         containernetworking-plugins iptables; do
  dpkg -s "$p" >/dev/null 2>&1 || need_pkgs+=("$p")
done
# A Docker engine and CLI: --load targets and the CLI-plugin tests.
{ command -v dockerd && command -v docker; } >/dev/null || need_pkgs+=(docker.io)
# PostgreSQL for the Postgres store's tests (internal/store/pgtest runs its own server in a
# temporary directory on a unix socket; the package's system service is not used).
if [ "$for_tests" = 1 ]; then
  dpkg -s postgresql >/dev/null 2>&1 || need_pkgs+=(postgresql)
fi
# ClickHouse for the export's end-to-end test (test/e2e/clickhouse_test.go), which runs its own
# server in a temporary directory on loopback; the package's system service is not used.
# Chromium, headless, for the dashboard's end-to-end test (test/e2e/dashboard_test.go), which
# drives it through the DevTools protocol; it loads nothing but kiln's own pages.
if [ "$for_tests" = 1 ]; then
  dpkg -s clickhouse-server >/dev/null 2>&1 || need_pkgs+=(clickhouse-server)
  dpkg -s chromium >/dev/null 2>&1 || need_pkgs+=(chromium)
  # Node runs the dashboard script's unit check (internal/web/assets_test.go).
  command -v node >/dev/null || need_pkgs+=(nodejs)
fi
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: installing ${need_pkgs[*]} needs root (sudo $0)" >&2; exit 1
  fi
  echo "setup: apt-get install ${need_pkgs[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi
command -v go >/dev/null || { echo "setup: Go 1.26 is required (https://go.dev/dl)" >&2; exit 1; }
if [ ! -x bin/buildkitd ]; then
  echo "setup: first run: about 15 minutes, most of it compiling buildkitd; later runs take seconds"
fi
# QEMU binfmt emulation and the foreign-arch busybox for multi-platform builds.
bash hack/setup-multiplatform.sh

mkdir -p bin
# buildkitd and buildctl: BuildKit's go.mod has exclude lines, so `go install pkg@version` refuses
# it; they are built through their own tool modfile, which also keeps the daemon's dependencies
# apart from the client-side BuildKit that kiln itself links.
BUILDKIT_VERSION=$(go list -modfile=tools/buildkit/go.mod -m -f '{{.Version}}' github.com/moby/buildkit)
if [ ! -x bin/buildkitd ] || [ ! -x bin/buildctl ] \
   || [ "$(bin/buildkitd --version 2>/dev/null | awk '{print $3}')" != "$BUILDKIT_VERSION" ] \
   || [ "$(bin/buildctl --version 2>/dev/null | awk '{print $3}')" != "$BUILDKIT_VERSION" ]; then
  echo "setup: building buildkitd and buildctl $BUILDKIT_VERSION (about 10 minutes the first time)..."
  go build -modfile=tools/buildkit/go.mod -ldflags "-X github.com/moby/buildkit/version.Version=$BUILDKIT_VERSION" \
    -o bin/ github.com/moby/buildkit/cmd/buildkitd github.com/moby/buildkit/cmd/buildctl
fi
# runc: cgo with the seccomp tag (libseccomp), or it builds fine and runs every step without a
# seccomp filter; `runc --version` prints a libseccomp line only when the filter is compiled in.
# Its version comes from the module's embedded VERSION file; gitCommit records the module tag.
RUNC_VERSION=$(go list -modfile=tools/runc/go.mod -m -f '{{.Version}}' github.com/opencontainers/runc)
if [ ! -x bin/runc ] || [ "$(bin/runc --version 2>/dev/null | awk 'NR==1{print $3}')" != "${RUNC_VERSION#v}" ] \
   || ! bin/runc --version 2>/dev/null | grep -q '^libseccomp: '; then
  echo "setup: building runc $RUNC_VERSION with seccomp (about a minute the first time)..."
  CGO_ENABLED=1 go build -modfile=tools/runc/go.mod -trimpath -buildmode=pie -tags "seccomp urfave_cli_no_docs" \
    -ldflags "-X main.gitCommit=$RUNC_VERSION" -o bin/runc github.com/opencontainers/runc
fi
# versitygw: a real S3 server (posix backend) for the S3 blob store's tests and e2e. It has its own
# tool modfile so its dependencies don't move kiln's; its version is the one pinned there.
# Only the tests use it: built with --tests (make test), not for make demo.
if [ "$for_tests" = 1 ]; then
  VERSITYGW_VERSION=$(go list -modfile=tools/versitygw/go.mod -m -f '{{.Version}}' github.com/versity/versitygw)
  if [ ! -x bin/versitygw ] || [ "$(bin/versitygw --version 2>/dev/null | awk '/^Version/{print $3}')" != "$VERSITYGW_VERSION" ]; then
    echo "setup: building versitygw $VERSITYGW_VERSION, an S3 server for the tests (about 3 minutes the first time)..."
    go build -modfile=tools/versitygw/go.mod -ldflags "-X main.Version=$VERSITYGW_VERSION" -o bin/versitygw \
      github.com/versity/versitygw/cmd/versitygw
  fi
fi
# --- Kubernetes test cluster (hack/kube; --tests only) ---
# The single-node Kubernetes the Kubernetes builder driver's tests run on (internal/kubetest,
# test/e2e/kube_test.go, docs/kubernetes.md "The test cluster"): etcd, the control plane, the
# kubelet, kubectl, containerd and the kube-network-policies engine, built from the modules
# pinned in hack/kube into bin/kube; openssl makes the cluster's certificates, iptables routes
# pod traffic to the policy engine, flock and setpriv (util-linux) serve its scripts.
if [ "$for_tests" = 1 ]; then
  kube_pkgs=()
  for p in openssl util-linux iptables containernetworking-plugins; do
    dpkg -s "$p" >/dev/null 2>&1 || kube_pkgs+=("$p")
  done
  if [ ${#kube_pkgs[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
      echo "setup: installing ${kube_pkgs[*]} needs root (sudo $0)" >&2; exit 1
    fi
    echo "setup: apt-get install ${kube_pkgs[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${kube_pkgs[@]}" >/dev/null
  fi
  if [ ! -x bin/kube/kubelet ]; then
    echo "setup: building the Kubernetes test cluster into bin/kube (about 25 minutes the first time, seconds after)..."
  fi
  bash hack/kube/build.sh
fi
# --- end of the Kubernetes test cluster ---
echo "setup: building kiln and kiln-full (a few minutes the first time, seconds after)..."
go build -ldflags "-X github.com/kiln-dev/kiln/internal/cli.Version=$(git describe --always --dirty 2>/dev/null || echo dev)" -o bin/ ./cmd/kiln ./cmd/kiln-full
echo "setup: done: $(bin/kiln version), buildkitd $(bin/buildkitd --version | awk '{print $3}'), $(bin/runc --version | head -1) ($(bin/runc --version | grep '^libseccomp:'))"
