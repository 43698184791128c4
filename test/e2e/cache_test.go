package e2e

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"buf.build/gen/go/depot/api/connectrpc/go/depot/core/v1/corev1connect"
	corev1 "buf.build/gen/go/depot/api/protocolbuffers/go/depot/core/v1"
	"connectrpc.com/connect"

	cliv1beta1 "github.com/kiln-dev/kiln/gen/depot/cli/v1beta1"
	"github.com/kiln-dev/kiln/gen/depot/cli/v1beta1/cliv1beta1connect"
)

const cacheDockerfile = baseStages + `
FROM busybox
COPY data.txt /data.txt
RUN sha256sum /data.txt > /sum && echo built > /marker
RUN cat /sum /marker > /out
`

// `kiln cache reset` empties one project's cache: its next build has no
// cache hits while another project, built the same way, keeps its cache.
func TestCacheResetEmptiesOneProject(t *testing.T) {
	t.Parallel()
	s := sharedServer(t)
	projA := s.createProject(t, "cache-a")
	projB := s.createProject(t, "cache-b")
	dir := writeContext(t, map[string]string{"Dockerfile": cacheDockerfile, "data.txt": "same input\n"})
	build := func(proj string) map[string]vertex {
		t.Helper()
		r := s.mustKiln(t, dir, "build", "--project", proj, "--progress", "rawjson", ".")
		return dockerfileSteps(t, r.Stdout+r.Stderr)
	}

	if n := cachedCount(build(projA)); n != 0 {
		t.Errorf("first build of A: %d cached steps, want 0", n)
	}
	if steps := build(projA); cachedCount(steps) != len(steps) {
		t.Fatalf("second build of A: %d of %d steps cached, want all: %v", cachedCount(steps), len(steps), steps)
	}
	build(projB)

	r := s.mustKiln(t, dir, "cache", "reset", "--project", projA)
	if !strings.Contains(r.Stdout, "cache-a") || !strings.Contains(r.Stdout, "default") {
		t.Errorf("cache reset output names neither the project nor its organization: %q", r.Stdout)
	}
	if steps := build(projA); cachedCount(steps) != 0 {
		t.Errorf("build of A after reset: %d of %d steps cached, want 0", cachedCount(steps), len(steps))
	}
	if steps := build(projB); cachedCount(steps) != len(steps) {
		t.Errorf("build of B after A's reset: %d of %d steps cached, want all (B keeps its cache)", cachedCount(steps), len(steps))
	}

	// The project comes from kiln.json like for kiln build.
	withFile := writeContext(t, map[string]string{"kiln.json": `{"id": "` + projB + `"}`})
	if r := s.mustKiln(t, withFile, "cache", "reset"); !strings.Contains(r.Stdout, "cache-b") {
		t.Errorf("cache reset from kiln.json: %q", r.Stdout)
	}
	if r := s.mustKiln(t, dir, "cache", "--help"); !strings.Contains(r.Stdout, "Examples:") {
		t.Errorf("cache --help has no examples")
	}
}

// depot.cli.v1beta1.ProjectsService through its generated client: what a
// caller sees, with organization names; who may reset which cache.
func TestCLIProjectsService(t *testing.T) {
	t.Parallel()
	s := sharedServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	projA := s.createProject(t, "v1beta1-a")
	projB := s.createProject(t, "v1beta1-b")
	api := cliv1beta1connect.NewProjectsServiceClient(http.DefaultClient, s.URL)

	res, err := api.ListProjects(ctx, bearer(&cliv1beta1.ListProjectsRequest{}, s.Token))
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]*cliv1beta1.ListProjectsResponse_Project{}
	for _, p := range res.Msg.Projects {
		seen[p.Id] = p
	}
	if a := seen[projA]; a == nil || a.Name != "v1beta1-a" || a.OrgName != "default" || !strings.HasPrefix(a.OrgId, "org_") || seen[projB] == nil {
		t.Errorf("ListProjects with the org token: %v", res.Msg.Projects)
	}

	tok, err := corev1connect.NewProjectServiceClient(http.DefaultClient, s.URL).CreateToken(ctx,
		bearer(&corev1.CreateTokenRequest{ProjectId: projA, Description: "a"}, s.Token))
	if err != nil {
		t.Fatal(err)
	}
	prj := tok.Msg.Secret
	res, err = api.ListProjects(ctx, bearer(&cliv1beta1.ListProjectsRequest{}, prj))
	if err != nil || len(res.Msg.Projects) != 1 || res.Msg.Projects[0].Id != projA {
		t.Errorf("ListProjects with A's project token: %v, %v (want only A)", res, err)
	}
	reset, err := api.ResetProjectCache(ctx, bearer(&cliv1beta1.ResetProjectCacheRequest{ProjectId: projA}, prj))
	if err != nil || reset.Msg.Name != "v1beta1-a" || reset.Msg.OrgName != "default" {
		t.Errorf("ResetProjectCache(A) with A's token: %v, %v", reset, err)
	}
	if _, err := api.ResetProjectCache(ctx, bearer(&cliv1beta1.ResetProjectCacheRequest{ProjectId: projB}, prj)); connect.CodeOf(err) != connect.CodeNotFound {
		t.Errorf("ResetProjectCache(B) with A's token: %v, want NotFound", err)
	}
	for _, bad := range []string{"", "../x", "nosuchproject", strings.Repeat("x", 4096)} {
		if _, err := api.ResetProjectCache(ctx, bearer(&cliv1beta1.ResetProjectCacheRequest{ProjectId: bad}, s.Token)); err == nil ||
			(connect.CodeOf(err) != connect.CodeNotFound && connect.CodeOf(err) != connect.CodeInvalidArgument) {
			t.Errorf("ResetProjectCache(%.20q): %v, want NotFound or InvalidArgument", bad, err)
		}
	}
	if _, err := api.ListProjects(ctx, connect.NewRequest(&cliv1beta1.ListProjectsRequest{})); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Errorf("ListProjects with no token: %v, want Unauthenticated", err)
	}
}
