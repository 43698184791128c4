package e2e

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	cliv1 "github.com/depot/depot-go/proto/depot/cli/v1"

	kilnv1 "github.com/kiln-dev/kiln/gen/kiln/v1"
)

// busyDockerfile keeps a core busy for three seconds and holds 64 MiB for a
// moment: well inside a 256 MiB builder.
const busyDockerfile = baseStages + `
FROM busybox
ARG RUN_ID
RUN echo "$RUN_ID"; end=$(( $(date +%s) + 3 )); while [ $(date +%s) -lt $end ]; do :; done; head -c 64m /dev/zero | tail | wc -c
`

// oomDockerfile's RUN step allocates 400 MiB: tail keeps everything after
// the last newline, and /dev/zero has none.
const oomDockerfile = baseStages + `
FROM busybox
ARG RUN_ID
RUN echo "$RUN_ID"; head -c 400m /dev/zero | tail >/dev/null
`

func (s *server) resources(t *testing.T, buildID, token string) (*kilnv1.GetBuildResourcesResponse, error) {
	t.Helper()
	res, err := s.sourceAPI().GetBuildResources(t.Context(), bearer(&kilnv1.GetBuildResourcesRequest{BuildId: buildID}, token))
	if err != nil {
		return nil, err
	}
	return res.Msg, nil
}

// builderMemoryLimit reads the memory limit of the cgroup buildkitd (pid)
// runs under, as an operator would: the builder's cgroup is the parent of
// buildkitd's own leaf.
func builderMemoryLimit(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		var file string
		switch {
		case parts[1] == "memory": // v1
			file = filepath.Join("/sys/fs/cgroup/memory", filepath.Dir(parts[2]), "memory.limit_in_bytes")
		case parts[0] == "0" && parts[1] == "" && fileExists("/sys/fs/cgroup/cgroup.controllers"): // v2
			file = filepath.Join("/sys/fs/cgroup", filepath.Dir(parts[2]), "memory.max")
		default:
			continue
		}
		v, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		n, err := strconv.ParseInt(strings.TrimSpace(string(v)), 10, 64)
		if err != nil {
			t.Fatalf("%s: %q", file, v)
		}
		return n
	}
	t.Fatalf("buildkitd (pid %d) has no memory cgroup:\n%s", pid, b)
	return 0
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// A server with --builder-memory runs each builder under that limit: a build
// whose RUN step allocates past it fails with an OOM event recorded on it,
// while the builder, the host and other projects' builders carry on; a
// normal build records samples of its builder's CPU and memory.
func TestBuilderResourcesAndOOM(t *testing.T) {
	s := startServer(t, "--builder-memory", "256MiB")
	projA := s.createProject(t, "res-a")
	projB := s.createProject(t, "res-b")
	runID := strconv.FormatInt(time.Now().UnixNano(), 10)

	// A normal build in A: samples with CPU and memory, no events.
	busy := writeContext(t, map[string]string{"Dockerfile": busyDockerfile})
	r := s.mustKiln(t, busy, "build", "--project", projA, "--progress", "plain", "--build-arg", "RUN_ID="+runID, ".")
	idA := buildIDOf(t, r)
	var res *kilnv1.GetBuildResourcesResponse
	// The last sample (the one after the step's allocation) is written
	// within a few seconds of the build's end.
	eventually(t, 15*time.Second, "samples with CPU, memory and the step's 64 MiB peak for the normal build", func() bool {
		var err error
		if res, err = s.resources(t, idA, s.Token); err != nil {
			t.Fatalf("GetBuildResources: %v", err)
		}
		var cpu, mem, peak bool
		for _, sm := range res.Samples {
			cpu = cpu || sm.CpuCores > 0.2
			mem = mem || sm.MemoryBytes > 0
			peak = peak || sm.MemoryPeakBytes >= 64<<20
		}
		return cpu && mem && peak
	})
	if len(res.Samples) < 2 {
		t.Errorf("%d samples for a build of over 3 s, want one a second", len(res.Samples))
	}
	for _, sm := range res.Samples {
		if sm.MemoryLimitBytes != 256<<20 {
			t.Fatalf("sample %v: limit %d, want 256 MiB", sm, sm.MemoryLimitBytes)
		}
		if sm.At.AsTime().IsZero() || sm.IntervalMs <= 0 {
			t.Errorf("sample without a time or interval: %v", sm)
		}
	}
	if len(res.Events) != 0 {
		t.Errorf("events for a build within its limit: %v", res.Events)
	}

	// Reading them is authorized like reading the build: B's token sees
	// nothing of A's build.
	if _, err := s.resources(t, idA, s.projectToken(t, projB)); connect.CodeOf(err) != connect.CodeNotFound && connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Errorf("GetBuildResources of A's build with B's token: %v, want NotFound or PermissionDenied", err)
	}
	if _, err := s.resources(t, "no-such-build", s.Token); connect.CodeOf(err) != connect.CodeNotFound {
		t.Errorf("GetBuildResources of an unknown build: %v, want NotFound", err)
	}

	var pidA int
	for _, b := range s.builders(t) {
		if b.ProjectID == projA {
			pidA = b.PID
		}
	}
	if pidA == 0 {
		t.Fatalf("A's builder not running: %+v", s.builders(t))
	}
	if got := builderMemoryLimit(t, pidA); got != 256<<20 {
		t.Errorf("A's builder cgroup limit %d, want 256 MiB", got)
	}

	// B's build outgrows the limit: the step is OOM-killed inside B's
	// builder, the build fails, and the event is on it.
	oom := writeContext(t, map[string]string{"Dockerfile": oomDockerfile})
	r = s.kiln(t, oom, nil, "build", "--project", projB, "--progress", "plain", "--build-arg", "RUN_ID="+runID, ".")
	if r.Err == nil {
		t.Fatalf("a build allocating 400 MiB under a 256 MiB limit succeeded:\n%s", tail(r.Stderr, 3000))
	}
	idB := buildIDOf(t, r)
	eventually(t, 15*time.Second, "the OOM event on the failed build", func() bool {
		var err error
		if res, err = s.resources(t, idB, s.Token); err != nil {
			t.Fatalf("GetBuildResources: %v", err)
		}
		for _, e := range res.Events {
			if e.Kind == "oom_kill" {
				return true
			}
		}
		return false
	})
	for _, e := range res.Events {
		if e.Kind == "oom_kill" && (e.Count < 1 || e.MemoryLimitBytes != 256<<20 || !strings.Contains(e.Message, "ran out of memory (limit 256.0 MiB)")) {
			t.Errorf("OOM event %v: want a count, the limit and a message saying so", e)
		}
	}
	if st := s.buildStatus(t, projB, idB); st != cliv1.BuildStatus_BUILD_STATUS_FAILED {
		t.Errorf("B's build status %v, want failed", st)
	}
	// What its user reads: the OOM, and the memory against the limit.
	if out := s.mustKiln(t, oom, "builds", "get", idB).Stdout; !regexp.MustCompile(`(?m)^event: +oom_kill at .*ran out of memory \(limit 256.0 MiB\)`).MatchString(out) ||
		!regexp.MustCompile(`(?m)^memory: +peak .* of 256.0 MiB`).MatchString(out) {
		t.Errorf("kiln builds get %s does not show the OOM and the limit:\n%s", idB, out)
	}

	// Nothing else was hurt: A's builder is the same process, ready, and
	// builds; B's builder survived its build's OOM and builds again; the
	// server answers.
	for _, b := range s.builders(t) {
		if b.ProjectID == projA && (b.PID != pidA || b.State != "ready") {
			t.Errorf("A's builder after B's OOM: %+v, want pid %d ready", b, pidA)
		}
	}
	s.mustKiln(t, busy, "build", "--project", projA, "--progress", "plain", "--build-arg", "RUN_ID="+runID+"-again", ".")
	r = s.mustKiln(t, busy, "build", "--project", projB, "--progress", "plain", "--build-arg", "RUN_ID="+runID+"-b", ".")
	if res, err := s.resources(t, buildIDOf(t, r), s.Token); err != nil {
		t.Fatal(err)
	} else {
		for _, e := range res.Events {
			if e.Kind == "oom_kill" {
				t.Errorf("B's next build got an OOM event of its own: %v", e)
			}
		}
	}
	if _, err := s.resources(t, idA, s.Token); err != nil {
		t.Errorf("server after the OOM: %v", err)
	}
}
