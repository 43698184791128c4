package e2e

import (
	"context"
	"encoding/json"
	"io"
	"math"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"buf.build/gen/go/depot/api/connectrpc/go/depot/core/v1/corev1connect"
	corev1 "buf.build/gen/go/depot/api/protocolbuffers/go/depot/core/v1"
	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

const usageDockerfile = baseStages + `
FROM busybox AS app
COPY data.txt /data.txt
RUN cat /data.txt > /out.txt && sleep 0.2

FROM busybox AS broken
RUN exit 7
`

// usageWant is what a project's usage must show.
type usageWant struct {
	builds int32
	ms     int64         // sum of finished - started of its builds
	wall   time.Duration // sum of the CLI's wall times
	cache  bool          // it has a layer cache
}

// builtBuild is a build the test ran, as the server reports it.
type builtBuild struct {
	b    *corev1.Build
	took time.Duration // the CLI's wall time
}

// A team runs builds in two projects, then reads usage, build statistics,
// shares a build and checks the audit log: every number is what the
// builds did.
func TestUsageBuildStatsSharesAndAudit(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	start := time.Now().Add(-time.Second)
	projA := s.createProject(t, "usage-a")
	projB := s.createProject(t, "usage-b")
	projIdle := s.createProject(t, "usage-idle")
	ctxDir := writeContext(t, map[string]string{"Dockerfile": usageDockerfile, "data.txt": "usage data\n"})
	builds := corev1connect.NewBuildServiceClient(http.DefaultClient, s.URL)

	// run builds with the CLI and returns the new build as GetBuild sees it.
	run := func(project, target string, wantOK bool) builtBuild {
		t.Helper()
		before := s.newestBuild(t, ctx, project)
		r := s.kiln(t, ctxDir, nil, "build", "--project", project, "--target", target, "--progress", "plain",
			"-o", "type=local,dest="+filepath.Join(t.TempDir(), "out"), ".")
		if (r.Err == nil) != wantOK {
			t.Fatalf("kiln build --target %s in %s: err = %v, want success %v\n%s", target, project, r.Err, wantOK, tail(r.Stderr, 4000))
		}
		id := s.newestBuild(t, ctx, project)
		if id == "" || id == before {
			t.Fatalf("no new build in %s after kiln build", project)
		}
		res, err := builds.GetBuild(ctx, bearer(&corev1.GetBuildRequest{BuildId: id}, s.Token))
		if err != nil {
			t.Fatalf("GetBuild(%s): %v", id, err)
		}
		return builtBuild{b: res.Msg.Build, took: r.Took}
	}
	coldA := run(projA, "app", true)
	warmA := run(projA, "app", true)
	failA := run(projA, "broken", false)
	coldB := run(projB, "app", true)
	warmB := run(projB, "app", true)
	end := time.Now().Add(time.Minute)

	// core.v1 GetBuild: statuses, step counts, durations.
	for name, c := range map[string]struct {
		bb     builtBuild
		status corev1.Build_Status
	}{"cold A": {coldA, corev1.Build_STATUS_SUCCESS}, "warm A": {warmA, corev1.Build_STATUS_SUCCESS},
		"failing A": {failA, corev1.Build_STATUS_FAILED}, "cold B": {coldB, corev1.Build_STATUS_SUCCESS}} {
		b := c.bb.b
		if b.Status != c.status || b.StartedAt == nil || b.FinishedAt == nil || b.BuildDurationSeconds == nil || b.TotalSteps == nil || b.CachedSteps == nil {
			t.Errorf("%s build: %v", name, b)
			continue
		}
		ms := b.FinishedAt.AsTime().Sub(b.StartedAt.AsTime()).Milliseconds()
		if want := int32((ms + 500) / 1000); b.GetBuildDurationSeconds() != want {
			t.Errorf("%s: build_duration_seconds = %d, want %d (finished - started = %d ms)", name, b.GetBuildDurationSeconds(), want, ms)
		}
		if float64(b.GetBuildDurationSeconds()) > c.bb.took.Seconds()+1 {
			t.Errorf("%s: build_duration_seconds %d exceeds the CLI's wall time %s", name, b.GetBuildDurationSeconds(), c.bb.took)
		}
	}
	for name, b := range map[string]*corev1.Build{"cold A": coldA.b, "cold B (its own cache)": coldB.b} {
		if b.GetCachedSteps() != 0 || b.GetTotalSteps() < 3 {
			t.Errorf("%s: cached %d of %d steps; want 0 of the Dockerfile's steps", name, b.GetCachedSteps(), b.GetTotalSteps())
		}
	}
	for name, b := range map[string]*corev1.Build{"warm A": warmA.b, "warm B": warmB.b} {
		if b.GetCachedSteps() != b.GetTotalSteps() || b.GetTotalSteps() != coldA.b.GetTotalSteps() {
			t.Errorf("%s: cached %d of %d steps; want every one of the cold build's %d", name, b.GetCachedSteps(), b.GetTotalSteps(), coldA.b.GetTotalSteps())
		}
	}

	// ListBuilds pages newest first.
	page1, err := builds.ListBuilds(ctx, bearer(&corev1.ListBuildsRequest{ProjectId: projA, PageSize: proto.Int32(2)}, s.Token))
	if err != nil {
		t.Fatal(err)
	}
	page2, err := builds.ListBuilds(ctx, bearer(&corev1.ListBuildsRequest{ProjectId: projA, PageSize: proto.Int32(2), PageToken: &page1.Msg.NextPageToken}, s.Token))
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, b := range append(page1.Msg.Builds, page2.Msg.Builds...) {
		ids = append(ids, b.BuildId)
	}
	if strings.Join(ids, ",") != strings.Join([]string{failA.b.BuildId, warmA.b.BuildId, coldA.b.BuildId}, ",") || page2.Msg.NextPageToken != "" {
		t.Errorf("ListBuilds pages = %v (next %q), want the 3 builds newest first", ids, page2.Msg.NextPageToken)
	}

	// Usage equals what the builds did.
	sumMs := func(bs ...builtBuild) (ms int64, wall time.Duration) {
		for _, bb := range bs {
			ms += bb.b.FinishedAt.AsTime().Sub(bb.b.StartedAt.AsTime()).Milliseconds()
			wall += bb.took
		}
		return ms, wall
	}
	usage := corev1connect.NewUsageServiceClient(http.DefaultClient, s.URL)
	period := func() (*timestamppb.Timestamp, *timestamppb.Timestamp) {
		return timestamppb.New(start), timestamppb.New(end)
	}
	want := map[string]usageWant{}
	msA, wallA := sumMs(coldA, warmA, failA)
	msB, wallB := sumMs(coldB, warmB)
	want[projA] = usageWant{3, msA, wallA, true}
	want[projB] = usageWant{2, msB, wallB, true}
	want[projIdle] = usageWant{0, 0, 0, false}
	check := func(how string, u *corev1.ProjectUsage) {
		t.Helper()
		w, ok := want[u.ProjectId]
		if !ok {
			t.Errorf("%s: unexpected project %s", how, u.ProjectId)
			return
		}
		if u.BuildCount != w.builds {
			t.Errorf("%s %s: build_count = %d, want %d", how, u.ProjectId, u.BuildCount, w.builds)
		}
		if wantSec := int32((w.ms + 500) / 1000); u.BuildDurationSeconds != wantSec || u.BuildDurationSeconds < 0 ||
			float64(u.BuildDurationSeconds) > w.wall.Seconds()+1 {
			t.Errorf("%s %s: build_duration_seconds = %d, want %d (sum of finished-started %d ms; CLI wall time %s)",
				how, u.ProjectId, u.BuildDurationSeconds, wantSec, w.ms, w.wall)
		}
		if (u.LayerCacheSizeGb > 0) != w.cache {
			t.Errorf("%s %s: layer_cache_size_gb = %d, want >0: %v", how, u.ProjectId, u.LayerCacheSizeGb, w.cache)
		}
	}
	for _, p := range []string{projA, projB, projIdle} {
		from, to := period()
		res, err := usage.GetProjectUsage(ctx, bearer(&corev1.GetProjectUsageRequest{ProjectId: p, StartAt: from, EndAt: to}, s.Token))
		if err != nil {
			t.Fatalf("GetProjectUsage(%s): %v", p, err)
		}
		check("GetProjectUsage", res.Msg.Usage)
	}
	seen := 0
	var pageTok *string
	for pages := 0; pages < 5; pages++ {
		from, to := period()
		res, err := usage.ListProjectUsage(ctx, bearer(&corev1.ListProjectUsageRequest{StartAt: from, EndAt: to, PageSize: proto.Int32(2), PageToken: pageTok}, s.Token))
		if err != nil {
			t.Fatalf("ListProjectUsage: %v", err)
		}
		for _, u := range res.Msg.Usage {
			check("ListProjectUsage", u)
			seen++
		}
		if res.Msg.NextPageToken == "" {
			break
		}
		pageTok = &res.Msg.NextPageToken
	}
	if seen != 3 {
		t.Errorf("ListProjectUsage listed %d projects, want 3", seen)
	}
	from, to := period()
	all, err := usage.GetUsage(ctx, bearer(&corev1.GetUsageRequest{StartAt: from, EndAt: to}, s.Token))
	if err != nil {
		t.Fatalf("GetUsage: %v", err)
	}
	t.Logf("GetUsage: %v\ncold A: %v\nwarm A: %v", all.Msg, coldA.b, warmA.b)
	byName := map[string]*corev1.ContainerBuildUsage{}
	for _, c := range all.Msg.ContainerBuild {
		byName[c.ProjectName] = c
	}
	for name, w := range map[string]struct {
		builds int32
		ms     int64
	}{"usage-a": {3, msA}, "usage-b": {2, msB}} {
		c := byName[name]
		if c == nil || c.BuildCount != w.builds || math.Abs(float64(c.MinutesBilled)-float64(w.ms)/60000) > 1e-4 || c.MinutesSaved < 0 {
			t.Errorf("GetUsage container_build %s = %v; want %d builds, %.5f minutes billed", name, c, w.builds, float64(w.ms)/60000)
		}
	}
	if c := byName["usage-a"]; c != nil && c.MinutesSaved <= 0 {
		t.Errorf("usage-a: minutes_saved = %v after a fully cached rebuild, want > 0", c.MinutesSaved)
	}
	if byName["usage-idle"] != nil || len(all.Msg.GithubActionsJobs) != 0 || len(all.Msg.AgentSandbox) != 0 {
		t.Errorf("GetUsage lists what did not happen: %v", all.Msg)
	}
	if len(all.Msg.Storage) != 1 || all.Msg.Storage[0].TotalGb <= 0 || !all.Msg.PeriodStart.AsTime().Equal(start.Truncate(time.Nanosecond)) {
		t.Errorf("GetUsage storage/period = %v / %v", all.Msg.Storage, all.Msg.PeriodStart)
	}

	// The caller's organization.
	orgs, err := corev1connect.NewOrganizationServiceClient(http.DefaultClient, s.URL).ListOrganizations(ctx, bearer(&corev1.ListOrganizationsRequest{}, s.Token))
	if err != nil || len(orgs.Msg.Organizations) != 1 || orgs.Msg.Organizations[0].OrgId == "" || orgs.Msg.Organizations[0].Name != "default" {
		t.Errorf("ListOrganizations = %v, %v", orgs, err)
	}

	// Sharing: anyone with the link reads the build, until it is revoked.
	shared, err := builds.ShareBuild(ctx, bearer(&corev1.ShareBuildRequest{BuildId: coldA.b.BuildId}, s.Token))
	if err != nil {
		t.Fatalf("ShareBuild: %v", err)
	}
	link := shared.Msg.ShareUrl
	if !strings.HasPrefix(link, s.URL+"/shared/") {
		t.Fatalf("share_url = %q, want under %s/shared/", link, s.URL)
	}
	page := httpGet(t, link, "")
	if page.code != 200 || !strings.Contains(page.body, coldA.b.BuildId) || !strings.Contains(page.body, "COPY data.txt /data.txt") {
		t.Errorf("GET share link = %d:\n%s", page.code, tail(page.body, 2000))
	}
	var view struct {
		BuildID    string `json:"build_id"`
		Status     string
		TotalSteps int32 `json:"total_steps"`
	}
	if err := json.Unmarshal([]byte(httpGet(t, link, "application/json").body), &view); err != nil || view.BuildID != coldA.b.BuildId ||
		view.Status != "success" || view.TotalSteps != coldA.b.GetTotalSteps() {
		t.Errorf("share link JSON = %+v, %v", view, err)
	}
	if _, err := builds.StopSharingBuild(ctx, bearer(&corev1.StopSharingBuildRequest{BuildId: coldA.b.BuildId}, s.Token)); err != nil {
		t.Fatalf("StopSharingBuild: %v", err)
	}
	if got := httpGet(t, link, ""); got.code != http.StatusNotFound {
		t.Errorf("revoked share link answers %d, want 404", got.code)
	}

	// A project token of A reaches A's builds only.
	projects := corev1connect.NewProjectServiceClient(http.DefaultClient, s.URL)
	tokA, err := projects.CreateToken(ctx, bearer(&corev1.CreateTokenRequest{ProjectId: projA, Description: "usage test"}, s.Token))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := builds.GetBuild(ctx, bearer(&corev1.GetBuildRequest{BuildId: coldA.b.BuildId}, tokA.Msg.Secret)); err != nil {
		t.Errorf("project token of A: GetBuild of A's build: %v", err)
	}
	for name, call := range map[string]func() error{
		"GetBuild": func() error {
			_, err := builds.GetBuild(ctx, bearer(&corev1.GetBuildRequest{BuildId: coldB.b.BuildId}, tokA.Msg.Secret))
			return err
		},
		"ShareBuild": func() error {
			_, err := builds.ShareBuild(ctx, bearer(&corev1.ShareBuildRequest{BuildId: coldB.b.BuildId}, tokA.Msg.Secret))
			return err
		},
		"GetProjectUsage": func() error {
			_, err := usage.GetProjectUsage(ctx, bearer(&corev1.GetProjectUsageRequest{ProjectId: projB}, tokA.Msg.Secret))
			return err
		},
	} {
		if code := connect.CodeOf(call()); code != connect.CodeNotFound && code != connect.CodePermissionDenied {
			t.Errorf("project token of A: %s on B: code %v, want NotFound or PermissionDenied", name, code)
		}
	}

	// Audit: a token created and deleted, and a request with a bad token.
	tmp, err := projects.CreateToken(ctx, bearer(&corev1.CreateTokenRequest{ProjectId: projB, Description: "short-lived"}, s.Token))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := projects.DeleteToken(ctx, bearer(&corev1.DeleteTokenRequest{TokenId: tmp.Msg.TokenId}, s.Token)); err != nil {
		t.Fatal(err)
	}
	const bogus = "kiln_prj_0000000000000000000000000000000000000000"
	if _, err := projects.ListProjects(ctx, bearer(&corev1.ListProjectsRequest{}, bogus)); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("bad token: %v, want Unauthenticated", err)
	}
	out := s.mustKiln(t, t.TempDir(), "audit", "--since", "1h").Stdout
	for _, want := range []string{"token_created", "token_deleted", tmp.Msg.TokenId, "denied", "invalid or expired token",
		"/depot.core.v1.ProjectService/ListProjects", "token_kind=project"} {
		if !strings.Contains(out, want) {
			t.Errorf("kiln audit output lacks %q:\n%s", want, out)
		}
	}
	for _, secret := range []string{bogus, tokA.Msg.Secret, tmp.Msg.Secret, s.Token} {
		if strings.Contains(out, secret) {
			t.Errorf("kiln audit output shows a token secret")
		}
	}
	denied := s.mustKiln(t, t.TempDir(), "audit", "--kind", "denied").Stdout
	if !strings.Contains(denied, "denied") || strings.Contains(denied, "token_created") {
		t.Errorf("kiln audit --kind denied:\n%s", denied)
	}
	r := s.kiln(t, t.TempDir(), []string{"KILN_TOKEN=" + tokA.Msg.Secret}, "audit")
	if r.Err == nil || !strings.Contains(r.Stderr, "organization token") {
		t.Errorf("kiln audit with a project token: err %v, stderr %q; want a refusal", r.Err, r.Stderr)
	}
	if r := s.kiln(t, t.TempDir(), nil, "audit", "--kind", "nonsense"); r.Err == nil || !strings.Contains(r.Stderr, "unknown event kind") {
		t.Errorf("kiln audit --kind nonsense: %v %q", r.Err, r.Stderr)
	}
}

type httpResult struct {
	code int
	body string
}

// httpGet fetches url without credentials.
func httpGet(t *testing.T, url, accept string) httpResult {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	c := &http.Client{Timeout: 30 * time.Second}
	res, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(res.Body, 1<<20))
	return httpResult{res.StatusCode, string(b)}
}

// newestBuild is the id of the project's newest build ("" if none), by
// depot.core.v1 ListBuilds.
func (s *server) newestBuild(t *testing.T, ctx context.Context, project string) string {
	t.Helper()
	res, err := corev1connect.NewBuildServiceClient(http.DefaultClient, s.URL).ListBuilds(ctx,
		bearer(&corev1.ListBuildsRequest{ProjectId: project, PageSize: proto.Int32(1)}, s.Token))
	if err != nil {
		t.Fatalf("ListBuilds(%s): %v", project, err)
	}
	if len(res.Msg.Builds) == 0 {
		return ""
	}
	return res.Msg.Builds[0].BuildId
}
