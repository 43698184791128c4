#!/usr/bin/env bash
# Multi-platform builds on one machine (run by hack/setup.sh; safe to run again):
#   - QEMU user emulation registered in binfmt_misc with the fix-binary flag, so a
#     builder for the other architecture can RUN its binaries inside runc containers;
#   - bin/busybox-<arch> for the foreign architecture (Debian's busybox-static), from
#     which the end-to-end tests make per-architecture base images offline.
# On amd64 the foreign architecture is arm64, on arm64 it is amd64.
set -euo pipefail
cd "$(dirname "$0")/.."

case "$(uname -m)" in
  x86_64)  foreign=arm64; qemu=qemu-aarch64; want_uname=aarch64 ;;
  aarch64) foreign=amd64; qemu=qemu-x86_64;  want_uname=x86_64 ;;
  *) echo "setup: multi-platform: unsupported host architecture $(uname -m)" >&2; exit 1 ;;
esac
binfmt=/proc/sys/fs/binfmt_misc

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: $1 needs root (sudo $0)" >&2; exit 1
  fi
}

need_pkgs=()
for p in qemu-user-static binfmt-support; do
  dpkg -s "$p" >/dev/null 2>&1 || need_pkgs+=("$p")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
  need_root "installing ${need_pkgs[*]}"
  echo "setup: apt-get install ${need_pkgs[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

# binfmt_misc is not mounted in some containers and minimal systems.
if [ ! -e "$binfmt/status" ]; then
  need_root "mounting binfmt_misc"
  echo "setup: mounting binfmt_misc at $binfmt"
  modprobe binfmt_misc 2>/dev/null || true # built in on some kernels
  mount -t binfmt_misc binfmt_misc "$binfmt"
fi
# The package registers its handlers when systemd-binfmt or binfmt-support's
# service runs; without an init system (containers, CI images) do it here.
if [ ! -e "$binfmt/$qemu" ]; then
  need_root "registering the $qemu binfmt handler"
  echo "setup: registering $qemu in binfmt_misc"
  update-binfmts --enable "$qemu" 2>/dev/null || update-binfmts --import "$qemu"
fi
if ! grep -qx enabled "$binfmt/$qemu"; then
  need_root "enabling the $qemu binfmt handler"
  echo 1 >"$binfmt/$qemu"
fi
# Without F (fix-binary) the kernel looks the interpreter up inside each
# container's root, where it does not exist, and every foreign RUN fails.
if ! grep -q '^flags:.*F' "$binfmt/$qemu"; then
  echo "setup: $binfmt/$qemu is registered without the F (fix-binary) flag; foreign-architecture RUN steps would fail inside containers." >&2
  echo "setup: re-register it: update-binfmts --disable $qemu && update-binfmts --enable $qemu (qemu-user-static's own registration has F)" >&2
  exit 1
fi

# The foreign architecture's static busybox, extracted from Debian's package.
mkdir -p bin
if [ ! -x "bin/busybox-$foreign" ]; then
  need_root "fetching busybox-static:$foreign"
  if ! dpkg --print-foreign-architectures | grep -qx "$foreign"; then
    echo "setup: dpkg --add-architecture $foreign"
    dpkg --add-architecture "$foreign"
  fi
  echo "setup: fetching busybox-static:$foreign into bin/busybox-$foreign"
  apt-get update -qq
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  chmod 0755 "$tmp"
  ! id _apt >/dev/null 2>&1 || chown _apt "$tmp" # lets apt download sandboxed, without a warning
  (cd "$tmp" && apt-get download -qq "busybox-static:$foreign")
  dpkg-deb -x "$tmp"/busybox-static_*_"$foreign".deb "$tmp/root"
  install -m 0755 "$tmp/root/bin/busybox" "bin/busybox-$foreign.tmp"
  mv "bin/busybox-$foreign.tmp" "bin/busybox-$foreign"
fi

# Prove emulation works end to end: the foreign busybox runs and reports its arch.
got=$("bin/busybox-$foreign" uname -m 2>&1 || true)
if [ "$got" != "$want_uname" ]; then
  echo "setup: bin/busybox-$foreign does not run under emulation (uname -m: $got; want $want_uname)" >&2
  exit 1
fi
echo "setup: multi-platform: $qemu emulation registered (flags: $(sed -n 's/^flags: //p' "$binfmt/$qemu")), bin/busybox-$foreign ready"
