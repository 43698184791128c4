package build_test

import (
	"context"
	"encoding/base64"
	"errors"
	"log/slog"
	"math"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/build"
	"github.com/kiln-dev/kiln/internal/builder/spec"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/project"
	"github.com/kiln-dev/kiln/internal/steps"
	"github.com/kiln-dev/kiln/internal/store"
)

// sizedFleet is a fleet that also reports cache sizes (build.CacheSizer).
type sizedFleet struct {
	sizes map[string]int64
}

func (sizedFleet) Ensure(spec.Spec) (spec.Endpoint, bool, error) {
	return spec.Endpoint{}, true, nil
}
func (sizedFleet) Lease(string, string, string)                {}
func (sizedFleet) Release(string, string, string)              {}
func (f sizedFleet) CacheSize(projectID string) (int64, error) { return f.sizes[projectID], nil }

var t0 = time.UnixMilli(1_750_000_000_000).UTC()

type statsEnv struct {
	svc          *build.Service
	st           store.Store
	org, prjA    auth.Principal
	prjB, bldTok auth.Principal
}

func statsSetup(t *testing.T) statsEnv {
	t.Helper()
	ctx := context.Background()
	st, err := store.OpenSQLite(ctx, filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	st.CreateOrganization(ctx, project.Organization{ID: "o", Name: "o"})
	st.CreateOrganization(ctx, project.Organization{ID: "o2", Name: "o2"})
	for _, p := range []project.Project{{ID: "pa", OrgID: "o"}, {ID: "pb", OrgID: "o"}, {ID: "qa", OrgID: "o2"}} {
		p.Name, p.CreatedAt = p.ID, t0
		if err := st.CreateProject(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	fleet := sizedFleet{sizes: map[string]int64{"pa": 5 << 20}}
	svc := build.NewService(st, fleet, fakeCerts{}, build.Config{ShareURL: func(tok string) string { return "https://kiln.example/shared/" + tok }},
		slog.New(slog.DiscardHandler))
	return statsEnv{svc: svc, st: st,
		org:    auth.Principal{TokenID: "tok_org", Kind: auth.TokenOrg, OrgID: "o"},
		prjA:   auth.Principal{TokenID: "tok_a", Kind: auth.TokenProject, OrgID: "o", ProjectID: "pa"},
		prjB:   auth.Principal{TokenID: "tok_b", Kind: auth.TokenProject, OrgID: "o", ProjectID: "pb"},
		bldTok: auth.Principal{TokenID: "tok_bld", Kind: auth.TokenBuild, OrgID: "o", ProjectID: "pa", BuildID: "b1"},
	}
}

// addBuild stores a build created at t0+at that ran for dur (running if
// dur < 0), with steps.
func (e statsEnv) addBuild(t *testing.T, id, project string, at, dur time.Duration, steps ...build.Step) build.Build {
	t.Helper()
	ctx := context.Background()
	b := build.Build{ID: id, ProjectID: project, OrgID: "o", Status: build.Running, CreatedAt: t0.Add(at), StartedAt: t0.Add(at)}
	if project == "qa" {
		b.OrgID = "o2"
	}
	if dur >= 0 {
		b.Status, b.FinishedAt = build.Succeeded, b.StartedAt.Add(dur)
	}
	if err := e.st.CreateBuild(ctx, b); err != nil {
		t.Fatal(err)
	}
	if len(steps) > 0 {
		if err := e.st.PutSteps(ctx, id, steps); err != nil {
			t.Fatal(err)
		}
	}
	return b
}

func step(digest, name string, cached bool, start time.Duration, took time.Duration) build.Step {
	return build.Step{Digest: digest, Name: name, Cached: cached, StartedAt: t0.Add(start), CompletedAt: t0.Add(start + took)}
}

func TestIsUserStep(t *testing.T) {
	for name, want := range map[string]bool{
		"[busybox 1/2] COPY busybox /bin/busybox": true,
		"[2/3] RUN make": true,
		"[linux/arm64 build 3/4] RUN go build ./...":       true,
		"[stage-1 10/12] COPY --from=build /src /app":      true,
		"[internal] load build definition from Dockerfile": false,
		"[internal] load metadata for docker.io/library/x": false,
		"[auth] library/busybox:pull token for registry":   false,
		"exporting to client directory":                    false,
		"[build 1/3]RUN no space is not BuildKit's format": false,
		"": false,
		"RUN [1/2] looks like a step but is not at the start": false,
	} {
		if got := steps.IsUserStep(name); got != want {
			t.Errorf("IsUserStep(%q) = %v, want %v", name, got, want)
		}
	}
}

func TestComputeStats(t *testing.T) {
	finished := build.Build{Status: build.Succeeded, StartedAt: t0, FinishedAt: t0.Add(2500 * time.Millisecond)}
	cold := []build.Step{
		step("d0", "[internal] load build definition from Dockerfile", false, 0, time.Millisecond),
		step("d1", "[busybox 1/2] COPY busybox /bin/busybox", false, 0, 300*time.Millisecond),
		step("d2", "[busybox 2/2] RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]", false, 0, time.Second),
		step("d3", "exporting to client directory", false, 0, time.Second),
	}
	got := build.ComputeStats(finished, cold, nil)
	if got != (build.Stats{Duration: 2500 * time.Millisecond, TotalSteps: 2}) {
		t.Errorf("cold build: %+v", got)
	}

	warm := make([]build.Step, len(cold))
	copy(warm, cold)
	for i := range warm[:3] {
		warm[i].Cached = true
	}
	last := map[string]time.Duration{cold[1].Name: 300 * time.Millisecond, cold[2].Name: time.Second, cold[0].Name: time.Hour}
	got = build.ComputeStats(finished, warm, last)
	if got.CachedSteps != 2 || got.TotalSteps != 2 || got.Saved != 1300*time.Millisecond {
		t.Errorf("fully cached rebuild: %+v; want 2/2 cached, 1.3s saved (internal steps never count)", got)
	}

	// Raw LLB (no Dockerfile names): every vertex but BuildKit's own.
	llb := []build.Step{{Name: "mkfile /hello", Cached: true}, {Name: "[internal] load"}, {Name: "exporting to image"}, {Name: "sh -c make"}}
	if got := build.ComputeStats(finished, llb, nil); got.TotalSteps != 2 || got.CachedSteps != 1 {
		t.Errorf("LLB build: %+v, want 2 steps, 1 cached", got)
	}
	running := build.Build{Status: build.Running, StartedAt: t0}
	if got := build.ComputeStats(running, nil, nil); got.Duration != 0 {
		t.Errorf("running build duration = %s, want 0", got.Duration)
	}
	clockSkew := build.Build{Status: build.Failed, StartedAt: t0, FinishedAt: t0.Add(-time.Second)}
	if d := build.BuildTime(clockSkew); d != 0 {
		t.Errorf("finished before started: %s, want 0", d)
	}
}

func TestSecondsAndGB(t *testing.T) {
	for d, want := range map[time.Duration]int32{
		-time.Second: 0, 0: 0, 499 * time.Millisecond: 0, 500 * time.Millisecond: 1,
		1499 * time.Millisecond: 1, time.Hour: 3600, math.MaxInt64: math.MaxInt32,
	} {
		if got := build.Seconds(d); got != want {
			t.Errorf("Seconds(%s) = %d, want %d", d, got, want)
		}
	}
	for b, want := range map[int64]int32{-1: 0, 0: 0, 1: 1, 1 << 30: 1, 1<<30 + 1: 2, 10 << 30: 10, math.MaxInt64: math.MaxInt32} {
		if got := build.CacheGB(b); got != want {
			t.Errorf("CacheGB(%d) = %d, want %d", b, got, want)
		}
	}
}

func TestNewPeriod(t *testing.T) {
	now := time.Date(2026, 3, 17, 12, 0, 0, 0, time.UTC)
	p, err := build.NewPeriod(time.Time{}, time.Time{}, now)
	if err != nil || !p.Start.Equal(time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)) || !p.End.Equal(now) {
		t.Errorf("default period = %+v, %v; want this month so far", p, err)
	}
	for _, c := range []struct{ start, end time.Time }{{now, now}, {now, now.Add(-time.Second)}, {now.Add(time.Hour), time.Time{}}} {
		if _, err := build.NewPeriod(c.start, c.end, now); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("NewPeriod(%s, %s) = %v, want ErrInvalid", c.start, c.end, err)
		}
	}
}

func TestPageThroughBuilds(t *testing.T) {
	e := statsSetup(t)
	ctx := context.Background()
	for _, id := range []string{"b1", "b2", "b3"} { // one millisecond
		e.addBuild(t, id, "pa", time.Minute, time.Second)
	}
	e.addBuild(t, "b0", "pa", 0, time.Second)
	e.addBuild(t, "x1", "pb", 0, time.Second)
	var seen []string
	tok := ""
	for i := 0; i < 5; i++ {
		builds, next, err := e.svc.Page(ctx, e.prjA, "", 2, tok) // a project token may omit its project
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range builds {
			seen = append(seen, b.ID)
		}
		if next == "" {
			break
		}
		tok = next
	}
	if strings.Join(seen, ",") != "b3,b2,b1,b0" {
		t.Errorf("pages = %v, want b3,b2,b1,b0", seen)
	}
	_, next, _ := e.svc.Page(ctx, e.org, "pa", 1, "")
	for name, bad := range map[string]string{
		"not base64":       "%%%",
		"garbage":          base64.RawURLEncoding.EncodeToString([]byte("hello")),
		"other project":    next, // used below with project pb
		"bad id":           base64.RawURLEncoding.EncodeToString([]byte("b1|pa|1750000060000|B1;DROP")),
		"negative time":    base64.RawURLEncoding.EncodeToString([]byte("b1|pa|-5|b1")),
		"future version":   base64.RawURLEncoding.EncodeToString([]byte("b9|pa|1750000060000|b1")),
		"huge":             strings.Repeat("A", 5000),
		"extra separators": base64.RawURLEncoding.EncodeToString([]byte("b1|pa|1|b1|x")),
	} {
		project := "pa"
		if name == "other project" {
			project = "pb"
		}
		if _, _, err := e.svc.Page(ctx, e.org, project, 2, bad); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("page token %s: %v, want ErrInvalid", name, err)
		}
	}
	if _, _, err := e.svc.Page(ctx, e.org, "pa", -1, ""); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("negative page size: %v", err)
	}
	if _, _, err := e.svc.Page(ctx, e.org, "", 0, ""); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("org token without project: %v", err)
	}
	if _, _, err := e.svc.Page(ctx, e.prjB, "pa", 0, ""); !errdefs.IsNotFound(err) {
		t.Errorf("project B listing A: %v, want NotFound", err)
	}
	if _, _, err := e.svc.Page(ctx, e.bldTok, "pa", 0, ""); !errors.Is(err, errdefs.ErrPermission) {
		t.Errorf("build token listing: %v, want ErrPermission", err)
	}
}

func TestBuildStatsSavedEstimate(t *testing.T) {
	e := statsSetup(t)
	ctx := context.Background()
	const make_, copy_ = "[build 2/2] RUN make", "[build 1/2] COPY . /src"
	e.addBuild(t, "b1", "pa", 0, 5*time.Second, step("a", copy_, false, 0, 100*time.Millisecond), step("b", make_, false, 0, 4*time.Second))
	e.addBuild(t, "b2", "pa", time.Minute, time.Second, step("a", copy_, true, time.Minute, 0), step("b", make_, true, time.Minute, 0))
	// Another project's history does not count for pa.
	e.addBuild(t, "c1", "pb", 0, time.Minute, step("c", "[build 3/3] RUN slow", false, 0, time.Minute))
	e.addBuild(t, "b3", "pa", 2*time.Minute, time.Second, step("c", "[build 3/3] RUN slow", true, 2*time.Minute, 0))

	b, st, err := e.svc.Stats(ctx, e.org, "b2")
	if err != nil || b.ID != "b2" {
		t.Fatal(b, err)
	}
	if st.CachedSteps != 2 || st.TotalSteps != 2 || st.Saved != 4100*time.Millisecond || st.Duration != time.Second {
		t.Errorf("b2 stats = %+v; want 2/2 cached, 4.1s saved, 1s", st)
	}
	if _, st, _ := e.svc.Stats(ctx, e.org, "b1"); st.CachedSteps != 0 || st.Saved != 0 || st.TotalSteps != 2 {
		t.Errorf("cold b1 stats = %+v", st)
	}
	if _, st, _ := e.svc.Stats(ctx, e.org, "b3"); st.Saved != 0 {
		t.Errorf("b3 saved %s from another project's history", st.Saved)
	}
	// A build token reaches its own build only.
	e.addBuild(t, "bx", "pa", 0, time.Second)
	if _, _, err := e.svc.Stats(ctx, e.bldTok, "b1"); err != nil {
		t.Errorf("build token on its build: %v", err)
	}
	if _, _, err := e.svc.Stats(ctx, e.bldTok, "bx"); !errdefs.IsNotFound(err) {
		t.Errorf("build token on another build: %v", err)
	}
	if _, _, err := e.svc.Stats(ctx, e.prjB, "b1"); !errdefs.IsNotFound(err) {
		t.Errorf("project B on A's build: %v", err)
	}
}

func TestShareLifecycle(t *testing.T) {
	e := statsSetup(t)
	ctx := context.Background()
	e.addBuild(t, "b1", "pa", 0, time.Second, step("a", "[1/1] RUN true", false, 0, time.Second))
	url, err := e.svc.Share(ctx, e.prjA, "b1")
	if err != nil {
		t.Fatal(err)
	}
	tok, ok := strings.CutPrefix(url, "https://kiln.example/shared/")
	if !ok || !build.ValidShareToken(tok) {
		t.Fatalf("share url = %q", url)
	}
	if again, _ := e.svc.Share(ctx, e.org, "b1"); again != url {
		t.Errorf("sharing again gave %q, want the same %q", again, url)
	}
	sb, err := e.svc.Shared(ctx, tok)
	if err != nil || sb.Build.ID != "b1" || sb.Stats.TotalSteps != 1 || len(sb.Steps) != 1 {
		t.Fatalf("Shared = %+v, %v", sb, err)
	}
	if _, err := e.svc.Share(ctx, e.prjB, "b1"); !errdefs.IsNotFound(err) {
		t.Errorf("project B sharing A's build: %v", err)
	}
	if _, err := e.svc.Share(ctx, e.bldTok, "b1"); !errors.Is(err, errdefs.ErrPermission) {
		t.Errorf("build token sharing: %v", err)
	}
	if err := e.svc.StopSharing(ctx, e.prjB, "b1"); !errdefs.IsNotFound(err) {
		t.Errorf("project B unsharing A's build: %v", err)
	}
	for _, bad := range []string{"", tok[:31], tok + "x", "../../../../etc/passwd", strings.Repeat("a", 32), tok[:31] + "/",
		tok[:31] + "\x00", strings.ToLower(tok[:1]) + tok[1:] + "é"} {
		if bad == tok {
			continue
		}
		if _, err := e.svc.Shared(ctx, bad); !errdefs.IsNotFound(err) {
			t.Errorf("Shared(%q) = %v, want NotFound", bad, err)
		}
	}
	if err := e.svc.StopSharing(ctx, e.org, "b1"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.Shared(ctx, tok); !errdefs.IsNotFound(err) {
		t.Errorf("revoked share: %v", err)
	}
	if err := e.svc.StopSharing(ctx, e.org, "b1"); err != nil {
		t.Errorf("unsharing an unshared build: %v", err)
	}
	if url2, _ := e.svc.Share(ctx, e.org, "b1"); url2 == url {
		t.Errorf("a revoked link came back: sharing again must mint a new token")
	}
}

func TestUsage(t *testing.T) {
	e := statsSetup(t)
	ctx := context.Background()
	const s1 = "[1/1] RUN build"
	e.addBuild(t, "a1", "pa", time.Minute, 1500*time.Millisecond, step("x", s1, false, time.Minute, 2*time.Second))
	e.addBuild(t, "a2", "pa", 2*time.Minute, 2*time.Second, step("y", s1, true, 2*time.Minute, 0))
	e.addBuild(t, "a3", "pa", 3*time.Minute, -1)           // running: counted, no time yet
	e.addBuild(t, "a4", "pa", 2*time.Hour, time.Second)    // after the period
	e.addBuild(t, "a0", "pa", -time.Minute, 9*time.Second) // before the period
	e.addBuild(t, "q1", "qa", time.Minute, 7*time.Second)  // another organization
	period := build.Period{Start: t0, End: t0.Add(time.Hour)}
	pa, _ := e.st.GetProject(ctx, "pa")
	pb, _ := e.st.GetProject(ctx, "pb")
	got, err := e.svc.Usage(ctx, e.org, []project.Project{pa, pb}, period, true)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Fatalf("usage = %+v", got)
	}
	if u := got[0]; u.Project.ID != "pa" || u.Builds != 3 || u.BuildTime != 3500*time.Millisecond || u.SavedTime != 2*time.Second || u.CacheBytes != 5<<20 {
		t.Errorf("pa usage = %+v; want 3 builds, 3.5s, 2s saved, 5 MiB", u)
	}
	if u := got[1]; u.Project.ID != "pb" || u.Builds != 0 || u.BuildTime != 0 || u.CacheBytes != 0 {
		t.Errorf("pb usage = %+v; want zeros", u)
	}
	if got, _ := e.svc.Usage(ctx, e.org, []project.Project{pa}, period, false); got[0].SavedTime != 0 {
		t.Errorf("saved time computed when not asked for")
	}
	if _, err := e.svc.Usage(ctx, e.prjB, []project.Project{pa}, period, false); !errdefs.IsNotFound(err) {
		t.Errorf("project B reading A's usage: %v", err)
	}
	if _, err := e.svc.Usage(ctx, e.bldTok, []project.Project{pa}, period, false); !errors.Is(err, errdefs.ErrPermission) {
		t.Errorf("build token reading usage: %v", err)
	}
}
