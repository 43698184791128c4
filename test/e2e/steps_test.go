package e2e

import (
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"buf.build/gen/go/depot/api/connectrpc/go/depot/core/v1/corev1connect"
	corev1 "buf.build/gen/go/depot/api/protocolbuffers/go/depot/core/v1"
	depotbuild "github.com/depot/depot-go/build"
	"github.com/depot/depot-go/machine"
	cliv1 "github.com/depot/depot-go/proto/depot/cli/v1"
	"github.com/moby/buildkit/client"
	"github.com/tonistiigi/fsutil"

	kilnv1 "github.com/kiln-dev/kiln/gen/kiln/v1"
	"github.com/kiln-dev/kiln/internal/steps"
)

// stepsDockerfile has a RUN step whose output says which run printed it,
// so a doubled log line shows.
const stepsDockerfile = baseStages + `
FROM busybox
COPY data.txt /data.txt
RUN echo "builder says: $(cat /data.txt)"
`

// silentBuild runs one Dockerfile build the way the depot CLI and depot-go
// do (CreateBuild, GetBuildKitConnection, dial the builder with the
// build's certificate, a plain BuildKit Solve, FinishBuild), reporting no
// steps to kiln at all. It returns the build's id and the Dockerfile
// steps BuildKit showed the client (digest → cached).
func silentBuild(t *testing.T, s *server, proj, dir string) (string, map[string]bool) {
	t.Helper()
	ctx := t.Context()
	b, err := depotbuild.NewBuild(ctx, &cliv1.CreateBuildRequest{ProjectId: proj,
		Options: []*cliv1.BuildOptions{{Command: cliv1.Command_COMMAND_BUILD}}}, s.Token)
	if err != nil {
		t.Fatalf("NewBuild: %v", err)
	}
	finished := false
	defer func() {
		if !finished {
			b.Finish(nil)
		}
	}()
	m, err := machine.Acquire(ctx, b.ID, b.Token, "amd64")
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	defer m.Release()
	c, err := m.Connect(ctx)
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	fs, err := fsutil.NewFS(dir)
	if err != nil {
		t.Fatal(err)
	}
	// The test watches BuildKit's status itself, to know the truth; it
	// sends nothing of it to kiln.
	ch := make(chan *client.SolveStatus)
	seen := map[string]bool{}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for st := range ch {
			for _, v := range st.Vertexes {
				if steps.IsUserStep(v.Name) {
					seen[v.Digest.String()] = seen[v.Digest.String()] || v.Cached
				}
			}
		}
	}()
	_, err = c.Solve(ctx, nil, client.SolveOpt{Frontend: "dockerfile.v0",
		LocalMounts: map[string]fsutil.FS{"context": fs, "dockerfile": fs},
		Exports:     []client.ExportEntry{{Type: client.ExporterLocal, OutputDir: t.TempDir()}}}, ch)
	wg.Wait()
	if err != nil {
		t.Fatalf("Solve: %v", err)
	}
	b.Finish(nil)
	finished = true
	if len(seen) == 0 {
		t.Fatal("BuildKit showed no Dockerfile steps")
	}
	return b.ID, seen
}

// getBuild is depot.core.v1 GetBuild, once kiln has recorded want steps
// (the builder's status is stored as it streams, a moment behind).
func getBuild(t *testing.T, s *server, id string, want int) *corev1.Build {
	t.Helper()
	builds := corev1connect.NewBuildServiceClient(http.DefaultClient, s.URL)
	var b *corev1.Build
	deadline := time.Now().Add(30 * time.Second)
	for {
		res, err := builds.GetBuild(t.Context(), bearer(&corev1.GetBuildRequest{BuildId: id}, s.Token))
		if err != nil {
			t.Fatalf("GetBuild(%s): %v", id, err)
		}
		b = res.Msg.Build
		if int(b.GetTotalSteps()) >= want || time.Now().After(deadline) {
			return b
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// A build whose client reports no steps (depot-go, the depot CLI,
// buildctl through the gateway) still has its real Dockerfile steps, with
// their logs, learned from the builder; a cached rebuild says so.
// Not parallel: depot-go reads its URL from the environment (t.Setenv).
func TestStepsOfASilentClientComeFromTheBuilder(t *testing.T) {
	s := sharedServer(t)
	proj := s.createProject(t, "silent-steps")
	t.Setenv("DEPOT_API_URL", s.URL)
	dir := writeContext(t, map[string]string{"Dockerfile": stepsDockerfile, "data.txt": "silent-1\n"})

	id, truth := silentBuild(t, s, proj, dir)
	b := getBuild(t, s, id, len(truth))
	if int(b.GetTotalSteps()) != len(truth) || b.GetCachedSteps() != 0 {
		t.Fatalf("cold build: GetBuild says %d cached of %d steps; BuildKit ran %d Dockerfile steps, none cached",
			b.GetCachedSteps(), b.GetTotalSteps(), len(truth))
	}
	var run string
	stored := map[string]bool{}
	for _, st := range s.steps(t, proj, id) {
		stored[st.Digest] = true
		if strings.Contains(st.Name, "RUN echo") {
			run = st.Digest
		}
	}
	for d := range truth {
		if !stored[d] {
			t.Errorf("GetBuildSteps lacks BuildKit's step %s", d)
		}
	}
	if run == "" {
		t.Fatal("GetBuildSteps has no RUN step")
	}
	if logs := s.stepLogs(t, proj, id, run); strings.Count(logs, "builder says: silent-1") != 1 {
		t.Errorf("RUN step's logs = %q; want the builder's line once", logs)
	}

	again, truth2 := silentBuild(t, s, proj, dir)
	b2 := getBuild(t, s, again, len(truth2))
	if b2.GetTotalSteps() == 0 || b2.GetCachedSteps() != b2.GetTotalSteps() || int(b2.GetTotalSteps()) != len(truth) {
		t.Errorf("cached rebuild: GetBuild says %d cached of %d; want all %d cached", b2.GetCachedSteps(), b2.GetTotalSteps(), len(truth))
	}
}

// kiln build reports its steps and logs itself and is also followed on
// the builder: each step and each log line is there once.
func TestStepsOfKilnBuildAreNotCountedTwice(t *testing.T) {
	t.Parallel()
	s := sharedServer(t)
	proj := s.createProject(t, "kiln-steps")
	dir := writeContext(t, map[string]string{"Dockerfile": stepsDockerfile, "data.txt": "kiln-1\n"})
	run := func() (string, *corev1.Build) {
		before := s.newestBuild(t, t.Context(), proj)
		r := s.mustKiln(t, dir, "build", "--project", proj, "--progress", "plain", "-o", "type=local,dest="+filepath.Join(t.TempDir(), "out"), ".")
		id := s.latestBuild(t, proj)
		if id == before {
			t.Fatalf("no new build after kiln build:\n%s", tail(r.Stderr, 2000))
		}
		return id, getBuild(t, s, id, 1)
	}
	cold, b := run()
	// The Dockerfile's numbered steps: the base's COPY and RUN, then
	// COPY and RUN.
	const want = 4
	// Give the builder stream and the client's reports time to both land.
	time.Sleep(2 * time.Second)
	b = getBuild(t, s, cold, want)
	if b.GetTotalSteps() != want || b.GetCachedSteps() != 0 {
		t.Errorf("cold kiln build: %d cached of %d steps; want 0 of %d", b.GetCachedSteps(), b.GetTotalSteps(), want)
	}
	digests := map[string]int{}
	var runStep string
	for _, st := range s.steps(t, proj, cold) {
		digests[st.Digest]++
		if strings.Contains(st.Name, "RUN echo") {
			runStep = st.Digest
		}
	}
	for d, n := range digests {
		if n != 1 {
			t.Errorf("step %s listed %d times", d, n)
		}
	}
	if logs := s.stepLogs(t, proj, cold, runStep); strings.Count(logs, "builder says: kiln-1") != 1 {
		t.Errorf("RUN step's logs = %q; want the line once, not once per source", logs)
	}
	warm, _ := run()
	time.Sleep(2 * time.Second)
	if b := getBuild(t, s, warm, want); b.GetTotalSteps() != want || b.GetCachedSteps() != want {
		t.Errorf("warm kiln build: %d cached of %d steps; want %d of %d", b.GetCachedSteps(), b.GetTotalSteps(), want, want)
	}

	// What a user reads: the step table of each build, and the project's
	// insights over both.
	got := s.mustKiln(t, dir, "builds", "get", cold).Stdout
	if !regexp.MustCompile(`(?m)^steps: +4 \(0 cached\)$`).MatchString(got) ||
		!regexp.MustCompile(`(?m)^\[[^\]]*\d/\d\] RUN echo .* +executed +\d+\.\ds$`).MatchString(got) {
		t.Errorf("kiln builds get %s (cold):\n%s", cold, got)
	}
	got = s.mustKiln(t, dir, "builds", "get", warm).Stdout
	if !regexp.MustCompile(`(?m)^steps: +4 \(4 cached`).MatchString(got) || strings.Count(got, " cached ") != want {
		t.Errorf("kiln builds get %s (warm): want 4 cached steps in the table:\n%s", warm, got)
	}
	got = s.mustKiln(t, dir, "builds", "insights", "--project", proj).Stdout
	if !strings.Contains(got, "2 builds; 2 finished") || !strings.Contains(got, "cache: 50% of steps cached (4 of 8)") {
		t.Errorf("kiln builds insights --project %s:\n%s", proj, got)
	}
}

// A source build is recorded by kiln's runner from its own solve; its
// solves also pass the gateway, and are not recorded a second time.
func TestStepsOfASourceBuildAreNotCountedTwice(t *testing.T) {
	t.Parallel()
	s := sharedServer(t)
	data := contextArchive(t, map[string]string{"Dockerfile": stepsDockerfile, "data.txt": "source-1\n"})
	const want = 4 // the base's COPY and RUN, then COPY and RUN
	for i, cached := range []int32{0, want} {
		created := s.createSource(t, s.Token, customer("steps-source"), data)
		if w := s.watch(t, s.Token, created.BuildId, 4*time.Minute); w.last.Status != kilnv1.BuildStatus_BUILD_STATUS_SUCCEEDED {
			t.Fatalf("source build %d ended %v: %s", i, w.last.Status, w.last.Error)
		}
		b := getBuild(t, s, created.BuildId, want)
		if b.GetTotalSteps() != want || b.GetCachedSteps() != cached {
			t.Errorf("source build %d: %d cached of %d steps; want %d of %d", i, b.GetCachedSteps(), b.GetTotalSteps(), cached, want)
		}
		if i > 0 {
			continue
		}
		for _, st := range s.steps(t, created.ProjectId, created.BuildId) {
			if strings.Contains(st.Name, "RUN echo") {
				if logs := s.stepLogs(t, created.ProjectId, created.BuildId, st.Digest); strings.Count(logs, "builder says: source-1") != 1 {
					t.Errorf("source build's RUN logs = %q; want the line once", logs)
				}
			}
		}
	}
}

// A bake of two targets is one build per project: its steps are both
// targets' Dockerfile steps as BuildKit ran them, each once, and a cached
// re-bake has them all cached. The targets' base stages are separate
// vertices (each COPYs from its own target's context), so 4 + 4 steps;
// the second of a pair may be answered from the first's cache.
func TestStepsOfABakeAreEveryTargetsOnce(t *testing.T) {
	t.Parallel()
	s := sharedServer(t)
	proj := s.createProject(t, "bake-steps")
	dir := writeContext(t, map[string]string{
		"Dockerfile":       stepsDockerfile,
		"data.txt":         "bake-1\n",
		"other.txt":        "bake-2\n",
		"Dockerfile.other": baseStages + "\nFROM busybox\nCOPY other.txt /other.txt\nRUN echo \"other says: $(cat /other.txt)\"\n",
		"docker-bake.hcl": `group "default" { targets = ["app", "other"] }
target "app" { output = ["type=cacheonly"] }
target "other" {
  dockerfile = "Dockerfile.other"
  output = ["type=cacheonly"]
}
`,
	})
	const want = 8
	bake := func() *corev1.Build {
		before := s.newestBuild(t, t.Context(), proj)
		r := s.mustKiln(t, dir, "bake", "--project", proj, "--progress", "plain")
		id := s.latestBuild(t, proj)
		if id == before {
			t.Fatalf("no new build after kiln bake:\n%s", tail(r.Stderr, 2000))
		}
		b := getBuild(t, s, id, want)
		if b.GetTotalSteps() != want {
			for _, st := range s.steps(t, proj, b.BuildId) {
				t.Logf("step %s %q %v", st.Digest, st.Name, st.CacheState)
			}
		}
		return b
	}
	if b := bake(); b.GetTotalSteps() != want || b.GetCachedSteps() == want {
		t.Errorf("cold bake: %d cached of %d steps; want %d, not all cached", b.GetCachedSteps(), b.GetTotalSteps(), want)
	}
	if b := bake(); b.GetTotalSteps() != want || b.GetCachedSteps() != want {
		t.Errorf("cached re-bake: %d cached of %d steps; want %d of %d", b.GetCachedSteps(), b.GetTotalSteps(), want, want)
	}
}
