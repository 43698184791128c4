# The builder image for kiln's Kubernetes builder driver (issue 19): buildkitd, buildctl, runc,
# git and the CNI plugins on a busybox-static base. hack/kube/builder-image.sh assembles its context
# (the binaries hack/setup.sh builds, Debian's busybox-static and CNI plugins, and the shared
# libraries they link: glibc's loader and libc, libseccomp for runc) and builds it with kiln.
#
# Context layout:
#   busybox            static busybox (Debian's busybox-static)
#   bin/               buildkitd, buildctl, runc
#   cni/               bridge, host-local, loopback, firewall (Debian's containernetworking-plugins)
#   git/bin/, git/core/  git and its HTTP(S) helper (Debian's), for git contexts
#   certs/             the CA certificates git checks servers against
#   lib/               libc.so.6, libseccomp.so.2 (-> /lib/x86_64-linux-gnu)
#   ld-linux-x86-64.so.2
#   buildkitd.toml
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
COPY ld-linux-x86-64.so.2 /lib64/ld-linux-x86-64.so.2
COPY lib/ /lib/x86_64-linux-gnu/
COPY bin/ /usr/local/bin/
COPY cni/ /opt/cni/bin/
COPY git/bin/ /usr/bin/
COPY git/core/ /usr/lib/git-core/
COPY certs/ /etc/ssl/certs/
COPY buildkitd.toml /etc/buildkit/buildkitd.toml
RUN mkdir -p /tmp /var/lib/buildkit /run && chmod 1777 /tmp \
 && echo "root:x:0:0:root:/root:/bin/sh" > /etc/passwd && echo "root:x:0:" > /etc/group \
 && buildkitd --version && runc --version && git --version
VOLUME /var/lib/buildkit
EXPOSE 1234
# kiln's Kubernetes driver passes all of buildkitd's arguments (its own --config, --addr, TLS,
# --root); without --config buildkitd reads /etc/buildkit/buildkitd.toml, this image's default.
ENTRYPOINT ["/usr/local/bin/buildkitd"]
