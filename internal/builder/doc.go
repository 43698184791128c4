// Package builder runs kiln's fleet of BuildKit daemons on the local machine:
// one buildkitd child process per (project, platform), each with its own
// state directory and therefore its own build cache.
//
// A Fleet starts builders on demand (Ensure, Acquire), tracks which builds
// use them (Lease, Release), stops the idle ones while keeping their cache on
// disk, restarts crashed ones, and wipes a project's cache on request (Reset).
//
// Each builder lives in Root/<project>/<arch>/:
//
//	state/            buildkitd --root: snapshots, cache metadata
//	certs/            server.crt, server.key and ca.crt (the project CA)
//	buildkitd.toml    worker and GC settings, rewritten at every start
//	buildkitd.log     buildkitd's stdout and stderr (previous: buildkitd.log.1)
//	buildkitd.sock    unix socket, unless the path is too long for one
//
// Builds reach a builder over TCP on 127.0.0.1 with mutual TLS: the server
// trusts only its project's CA, so only client certificates issued for that
// project (pki.Authority.IssueClient) are accepted. kiln itself probes
// readiness over the unix socket, which buildkitd serves without TLS.
//
// buildkitd's RUN steps execute under runc, which BuildKit starts in a process
// group of its own; when buildkitd dies those processes are orphaned, not
// killed, and their overlay mounts stay. Inside their mount namespace their
// root, cwd and exe read as "/" and "/bin/...", so paths alone do not find
// them. After a builder's process exits the fleet therefore kills, besides
// buildkitd's process group: processes whose root, cwd or executable path is
// under the builder's directory, processes whose root or cwd is on a
// filesystem mounted only under it (a container's overlay rootfs), and the
// processes of runc containers whose rootfs is under it (from runc's state in
// /run/runc, which it then removes with the containers' cgroups). Last, it
// detaches every mount under the directory.
//
// The package only works as root on Linux, as buildkitd's OCI worker does.
package builder
