#!/usr/bin/env bash
# Installs what kiln needs on Debian 12 and builds its binaries into bin/:
#   runc (builders' container runtime), busybox-static (local base images),
#   buildkitd + buildctl v0.26.3 (from the pinned Go module), versitygw (an S3 server for tests,
#   from tools/versitygw/go.mod) and kiln; QEMU binfmt emulation and bin/busybox-<foreign arch>
#   for multi-platform builds (setup-multiplatform.sh).
# Safe to run again; it only rebuilds what is missing or stale.
set -euo pipefail
cd "$(dirname "$0")/.."
export GONOSUMDB=buf.build/gen/go
BUILDKIT_VERSION=v0.26.3

need_pkgs=()
for p in runc busybox-static ca-certificates make git curl; do
  dpkg -s "$p" >/dev/null 2>&1 || need_pkgs+=("$p")
done
# A Docker engine and CLI: --load targets and the CLI-plugin tests.
{ command -v dockerd && command -v docker; } >/dev/null || need_pkgs+=(docker.io)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: installing ${need_pkgs[*]} needs root (sudo $0)" >&2; exit 1
  fi
  echo "setup: apt-get install ${need_pkgs[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi
command -v go >/dev/null || { echo "setup: Go 1.26 is required (https://go.dev/dl)" >&2; exit 1; }
# QEMU binfmt emulation and the foreign-arch busybox for multi-platform builds.
bash hack/setup-multiplatform.sh

mkdir -p bin
if [ ! -x bin/buildkitd ] || [ ! -x bin/buildctl ] || [ "$(bin/buildkitd --version 2>/dev/null | awk '{print $3}')" != "$BUILDKIT_VERSION" ]; then
  echo "setup: building buildkitd and buildctl $BUILDKIT_VERSION (a few minutes the first time)"
  go build -ldflags "-X github.com/moby/buildkit/version.Version=$BUILDKIT_VERSION" -o bin/ \
    github.com/moby/buildkit/cmd/buildkitd github.com/moby/buildkit/cmd/buildctl
fi
# versitygw: a real S3 server (posix backend) for the S3 blob store's tests and e2e. It has its own
# tool modfile so its dependencies don't move kiln's; its version is the one pinned there.
VERSITYGW_VERSION=$(go list -modfile=tools/versitygw/go.mod -m -f '{{.Version}}' github.com/versity/versitygw)
if [ ! -x bin/versitygw ] || [ "$(bin/versitygw --version 2>/dev/null | awk '/^Version/{print $3}')" != "$VERSITYGW_VERSION" ]; then
  echo "setup: building versitygw $VERSITYGW_VERSION (about a minute the first time)"
  go build -modfile=tools/versitygw/go.mod -ldflags "-X main.Version=$VERSITYGW_VERSION" -o bin/versitygw \
    github.com/versity/versitygw/cmd/versitygw
fi
echo "setup: building kiln"
go build -ldflags "-X github.com/kiln-dev/kiln/internal/cli.Version=$(git describe --always --dirty 2>/dev/null || echo dev)" -o bin/kiln ./cmd/kiln
echo "setup: done: $(bin/kiln version), buildkitd $(bin/buildkitd --version | awk '{print $3}'), $(runc --version | head -1)"
