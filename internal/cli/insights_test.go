package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"buf.build/gen/go/depot/api/connectrpc/go/depot/build/v1/buildv1connect"
	"buf.build/gen/go/depot/api/connectrpc/go/depot/core/v1/corev1connect"
	buildv1 "buf.build/gen/go/depot/api/protocolbuffers/go/depot/build/v1"
	corev1 "buf.build/gen/go/depot/api/protocolbuffers/go/depot/core/v1"
	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	kilnv1 "github.com/kiln-dev/kiln/gen/kiln/v1"
)

// fakeInsights answers depot.core.v1 GetBuild and depot.build.v1
// GetBuildSteps for the builds of testBuilds.
type fakeInsights struct {
	corev1connect.UnimplementedBuildServiceHandler
	stats map[string]*corev1.Build
	steps map[string][]*buildv1.GetBuildStepsResponse_BuildStep
}

func (f *fakeInsights) GetBuild(_ context.Context, req *connect.Request[corev1.GetBuildRequest]) (*connect.Response[corev1.GetBuildResponse], error) {
	b, ok := f.stats[req.Msg.BuildId]
	if !ok {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("build %s not found", req.Msg.BuildId))
	}
	return connect.NewResponse(&corev1.GetBuildResponse{Build: b}), nil
}

type fakePublicBuilds struct {
	buildv1connect.UnimplementedBuildServiceHandler
	f *fakeInsights
}

func (p fakePublicBuilds) GetBuildSteps(_ context.Context, req *connect.Request[buildv1.GetBuildStepsRequest]) (*connect.Response[buildv1.GetBuildStepsResponse], error) {
	return connect.NewResponse(&buildv1.GetBuildStepsResponse{BuildSteps: p.f.steps[req.Msg.BuildId]}), nil
}

// mount adds the two services to mux.
func (f *fakeInsights) mount(mux *http.ServeMux) {
	mux.Handle(corev1connect.NewBuildServiceHandler(f))
	mux.Handle(buildv1connect.NewBuildServiceHandler(fakePublicBuilds{f: f}))
}

func testInsights(now time.Time) *fakeInsights {
	step := func(name string, start, took time.Duration, cached bool) *buildv1.GetBuildStepsResponse_BuildStep {
		s := &buildv1.GetBuildStepsResponse_BuildStep{Name: name, StartedAt: ts(now.Add(start)), CompletedAt: ts(now.Add(start + took)),
			CacheState: buildv1.GetBuildStepsResponse_BuildStep_CACHE_STATE_UNCACHED}
		if cached {
			s.CacheState = buildv1.GetBuildStepsResponse_BuildStep_CACHE_STATE_CACHED
		}
		return s
	}
	return &fakeInsights{
		stats: map[string]*corev1.Build{
			"b3": {BuildId: "b3"},
			"b2": {BuildId: "b2", CachedSteps: proto.Int32(1), TotalSteps: proto.Int32(3), SavedDurationSeconds: proto.Int32(40)},
			"b1": {BuildId: "b1", CachedSteps: proto.Int32(0), TotalSteps: proto.Int32(1)},
		},
		steps: map[string][]*buildv1.GetBuildStepsResponse_BuildStep{
			"b2": {
				step("[depot] launching amd64 machine", 0, 5*time.Second, false),
				step("[internal] load build definition from Dockerfile", 0, 9*time.Second, false),
				step("[1/3] FROM base", 0, time.Second, true),
				step("[2/3] RUN make", time.Second, 50*time.Second, false),
				step("[3/3] COPY out /", 51*time.Second, 2*time.Second, false),
			},
		},
	}
}

func (f *fakeSourceBuilds) GetBuildResources(_ context.Context, req *connect.Request[kilnv1.GetBuildResourcesRequest]) (*connect.Response[kilnv1.GetBuildResourcesResponse], error) {
	if req.Msg.BuildId != "b2" {
		return connect.NewResponse(&kilnv1.GetBuildResourcesResponse{}), nil
	}
	at := timestamppb.New(time.Date(2026, 12, 2, 12, 3, 4, 0, time.Local))
	return connect.NewResponse(&kilnv1.GetBuildResourcesResponse{
		Samples: []*kilnv1.ResourceSample{{At: at, CpuCores: 0.4, MemoryBytes: 100 << 20, MemoryLimitBytes: 256 << 20},
			{At: at, CpuCores: 1.8, MemoryBytes: 120 << 20, MemoryPeakBytes: 200 << 20, MemoryLimitBytes: 256 << 20}},
		Events: []*kilnv1.ResourceEvent{{At: at, Kind: "oom_kill", Message: "the kernel killed 1 process: out of memory", Count: 1}},
	}), nil
}

// `kiln builds get` adds the step counts and a table of the counted steps,
// the slowest first; the client's and BuildKit's own steps are left out.
func TestBuildsGetSteps(t *testing.T) {
	f := newFakeSourceBuilds(t)
	now := time.Now()
	f.builds = testBuilds(now)
	testInsights(now).mount(f.mux)
	stdout, _, err := runKiln(t, f, "builds", "get", "b2")
	if err != nil {
		t.Fatal(err)
	}
	for _, re := range []string{`(?m)^steps: +3 \(1 cached, about 40.0s saved\)$`, `(?m)^cpu: +peak 1.8 cores`,
		`(?m)^memory: +peak 200.0 MiB of 256.0 MiB \(78%\)$`, `(?m)^event: +oom_kill at 12:03:04: the kernel killed 1 process: out of memory$`} {
		if !regexp.MustCompile(re).MatchString(stdout) {
			t.Errorf("output lacks %s:\n%s", re, stdout)
		}
	}
	if !strings.Contains(stdout, "STEP (slowest first)") {
		t.Fatalf("no step table:\n%s", stdout)
	}
	table := stdout[strings.Index(stdout, "STEP (slowest first)"):]
	lines := strings.Split(strings.TrimSpace(table), "\n")
	for i, re := range []string{`^STEP \(slowest first\) +RESULT +DURATION$`, `^\[2/3\] RUN make +executed +50.0s$`,
		`^\[3/3\] COPY out / +executed +2.0s$`, `^\[1/3\] FROM base +cached +1.0s$`} {
		if i >= len(lines) || !regexp.MustCompile(re).MatchString(lines[i]) {
			t.Errorf("step table line %d: want %s in:\n%s", i, re, table)
		}
	}
	if strings.Contains(stdout, "[depot]") || strings.Contains(stdout, "[internal]") {
		t.Errorf("uncounted steps in the table:\n%s", stdout)
	}
}

func TestBuildsInsights(t *testing.T) {
	f := newFakeSourceBuilds(t)
	now := time.Now()
	f.builds = testBuilds(now)
	testInsights(now).mount(f.mux)
	stdout, _, err := runKiln(t, f, "builds", "insights", "--project", "p1")
	if err != nil {
		t.Fatal(err)
	}
	for _, re := range []string{
		`(?m)^BUILD ID +KIND +STATUS +CREATED +DURATION +STEPS CACHED$`,
		`(?m)^b3 +source +queued +10s ago +- +-$`,
		`(?m)^b2 +source +succeeded +3m ago +1m05s +1/3$`,
		`(?m)^b1 +client +failed +2d ago +1.5s +0/1$`,
		`(?m)^3 builds; 2 finished: duration median 1.5s, p90 1m05s$`,
		`(?m)^cache: 25% of steps cached \(1 of 4\), about 40.0s saved$`,
	} {
		if !regexp.MustCompile(re).MatchString(stdout) {
			t.Errorf("output lacks %s:\n%s", re, stdout)
		}
	}

	stdout, _, err = runKiln(t, f, "builds", "insights", "--project", "p1", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Builds  []insightRow   `json:"builds"`
		Summary insightSummary `json:"summary"`
	}
	if err := json.Unmarshal([]byte(stdout), &got); err != nil || len(got.Builds) != 3 || got.Summary.CacheHitRate != 0.25 || got.Summary.SavedSeconds != 40 {
		t.Errorf("--json = %s (%v)", stdout, err)
	}

	if _, _, err := runKiln(t, f, "builds", "insights", "--project", "p1", "--limit", "0"); err == nil || !strings.Contains(err.Error(), "--limit 0") {
		t.Errorf("--limit 0: %v", err)
	}
}

// Nearest rank: the p-th percentile of n values is the ceil(p·n)-th.
func TestPercentileNearestRank(t *testing.T) {
	six := []float64{1, 2, 3, 4, 5, 6}
	for _, c := range []struct {
		vals []float64
		p    float64
		want float64
	}{
		{six, 0.9, 6}, {six, 0.5, 3}, {[]float64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, 0.9, 9}, {[]float64{7}, 0.9, 7}, {nil, 0.9, 0},
	} {
		if got := percentile(c.vals, c.p); got != c.want {
			t.Errorf("percentile(%v, %v) = %v, want %v", c.vals, c.p, got, c.want)
		}
	}
}
