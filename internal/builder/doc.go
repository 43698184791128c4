// Package builder runs kiln's fleet of BuildKit daemons on the local machine:
// one buildkitd child process per (project, platform), each with its own
// state directory and therefore its own build cache.
//
// A Fleet starts builders on demand (Ensure, Acquire), tracks which builds
// use them (Lease, Release, and the gateway's Hold for every open
// connection), stops the idle ones while keeping their cache on disk,
// restarts crashed ones, replaces (Recycle) those that stop answering or
// run out of disk (health.go), and wipes a project's cache on request
// (Reset). Errors it reports for builds are written for their users and
// name no server path; the details go to the server log.
//
// Each builder lives in Root/<project>/<arch>/:
//
//	state/            buildkitd --root: snapshots, cache metadata, its steps' network namespaces
//	tmp/              its TMPDIR (BuildKit's temporary mounts while it exports), emptied at each start
//	buildkitd.toml    worker, GC, network and registry settings, rewritten at every start
//	buildkitd.log     buildkitd's stdout and stderr (previous: buildkitd.log.1)
//	buildkitd.sock    unix socket, unless the path is too long for one
//
// buildkitd listens on that unix socket only (plain gRPC, in a 0700
// directory). Builds reach it through kiln's builder gateway
// (internal/gateway), which terminates mutual TLS with the project's CA and
// splices each authorized connection to the socket; Lookup is how the
// gateway finds a builder by its TLS server name. kiln itself probes
// readiness over the socket.
//
// RUN steps run in private network namespaces on a bridge and subnet of the
// builder's own, behind an egress policy kiln writes (network.go); builders
// get a minimal environment (buildkitdEnv), never kiln's.
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
// Each builder also has a cgroup of its own (cgroup v1 or v2, detected at
// start; cgroup.go): buildkitd in it, its RUN steps below it (BuildKit's
// defaultCgroupParent), under Config.MemoryLimit, so that a step that
// outgrows the limit is OOM-killed inside its builder. While builds hold a
// builder, the fleet reads its cgroup every second and reports CPU, memory,
// disk I/O and OOM kills for those builds (Config.OnUsage; resources.go).
// The cgroup goes with the run; what a killed kiln left is killed and
// removed by the next NewFleet on the same Root.
//
// The package only works as root on Linux, as buildkitd's OCI worker does.
package builder
