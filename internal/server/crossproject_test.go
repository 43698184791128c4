package server

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	cliv1 "github.com/depot/depot-go/proto/depot/cli/v1"
	"github.com/depot/depot-go/proto/depot/cli/v1/cliv1connect"

	cliv1extra "github.com/kiln-dev/kiln/gen/depot/cli/v1"
	"github.com/kiln-dev/kiln/internal/audit"
	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/build"
	"github.com/kiln-dev/kiln/internal/builder"
	"github.com/kiln-dev/kiln/internal/project"
)

// attackServer is a whole kiln server (its real store, interceptors and
// audit log; builders never start) with two organizations: the bootstrap
// one with projects p1 and p2, and "o2" with p3 and a build in it.
type attackServer struct {
	s     *Server
	url   string
	admin auth.Principal
	p1Tok string // a project token of p1
}

func startAttackServer(t *testing.T) *attackServer {
	t.Helper()
	data := t.TempDir()
	cfg := Config{
		DataDir:       data,
		Addr:          "127.0.0.1:0",
		BuildkitdPath: "/bin/true",
		// A pool no other test uses (see TestNewReleasesOnLateFailure).
		BuilderNetwork: builder.Network{Pool: netip.MustParsePrefix("10.78.0.0/16")},
		Logger:         slog.New(slog.DiscardHandler),
	}
	ctx, cancel := context.WithCancel(context.Background())
	s, err := New(ctx, cfg)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	addr, err := s.Listen()
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { s.Serve(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	adminSecret, err := os.ReadFile(AdminTokenPath(data))
	if err != nil {
		t.Fatal(err)
	}
	admin, err := (&auth.Authenticator{Store: s.store}).Authenticate(ctx, strings.TrimSpace(string(adminSecret)))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(s.store.CreateProject(ctx, project.Project{ID: "p1", OrgID: admin.OrgID, Name: "one", CreatedAt: now}))
	must(s.store.CreateProject(ctx, project.Project{ID: "p2", OrgID: admin.OrgID, Name: "two", CreatedAt: now}))
	must(s.store.CreateOrganization(ctx, project.Organization{ID: "o2", Name: "other", CreatedAt: now}))
	must(s.store.CreateProject(ctx, project.Project{ID: "p3", OrgID: "o2", Name: "three", CreatedAt: now}))
	must(s.store.CreateBuild(ctx, build.Build{ID: "b3", ProjectID: "p3", OrgID: "o2", Status: build.Running, CreatedAt: now, StartedAt: now, LastHealthAt: now}))
	must(s.store.CreateBuild(ctx, build.Build{ID: "b2", ProjectID: "p2", OrgID: admin.OrgID, Status: build.Running, CreatedAt: now, StartedAt: now, LastHealthAt: now}))
	secret, hash := auth.NewSecret(auth.TokenProject)
	must(s.store.CreateToken(ctx, auth.Token{ID: "tok_p1", Kind: auth.TokenProject, OrgID: admin.OrgID, ProjectID: "p1", SecretHash: hash, CreatedAt: now}))
	return &attackServer{s: s, url: "http://" + addr.String(), admin: admin, p1Tok: secret}
}

func withBearer[T any](m *T, token string) *connect.Request[T] {
	r := connect.NewRequest(m)
	r.Header().Set("Authorization", "Bearer "+token)
	return r
}

// A project token of p1 tries to build in p2 (its organization), in p3
// (another organization) and in a project that does not exist. Each is
// refused with PermissionDenied (which the depot CLI shows as it is, where
// it turns NotFound into "missing project ID; please run depot init"),
// naming both projects, the three answers identical but for the id the
// caller sent; each refusal is in the audit log of the token's
// organization.
func TestCreateBuildInAnotherProject(t *testing.T) {
	a := startAttackServer(t)
	api := cliv1connect.NewBuildServiceClient(http.DefaultClient, a.url)
	ctx := t.Context()

	own, err := api.CreateBuild(ctx, withBearer(&cliv1.CreateBuildRequest{ProjectId: "p1"}, a.p1Tok))
	if err != nil {
		t.Fatalf("CreateBuild in the token's own project: %v", err)
	}
	if want := a.s.buildURL(own.Msg.BuildId); own.Msg.BuildUrl != want || !strings.HasPrefix(want, a.url+"/builds/") {
		t.Errorf("build_url = %q, want %q under %s/builds/", own.Msg.BuildUrl, want, a.url)
	}

	targets := []string{"p2", "p3", "nosuchproject"}
	var msgs []string
	for _, target := range targets {
		_, err := api.CreateBuild(ctx, withBearer(&cliv1.CreateBuildRequest{ProjectId: target}, a.p1Tok))
		want := "this token belongs to project p1; it cannot build in project " + target
		var ce *connect.Error
		if !errorsAs(err, &ce) || ce.Code() != connect.CodePermissionDenied || !strings.HasPrefix(ce.Message(), want+":") {
			t.Errorf("CreateBuild in %s with p1's token: %v; want permission_denied %q", target, err, want)
			continue
		}
		msgs = append(msgs, strings.Replace(ce.Message(), target, "Y", 1))
	}
	for _, m := range msgs {
		if m != msgs[0] {
			t.Errorf("the answers differ beyond the project id: %q vs %q", m, msgs[0])
		}
	}
	// A hostile id is quoted and clipped, not echoed raw.
	_, err = api.CreateBuild(ctx, withBearer(&cliv1.CreateBuildRequest{ProjectId: "x\nforged: line" + strings.Repeat("a", 500)}, a.p1Tok))
	if ce := new(connect.Error); !errorsAs(err, &ce) || strings.Contains(ce.Message(), "\n") || len(ce.Message()) > 200 {
		t.Errorf("CreateBuild with a hostile project id: %v", err)
	}

	events, _, err := a.s.audit.List(ctx, a.admin, audit.Query{Kinds: []string{audit.KindDenied}, PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	for _, target := range targets {
		found := false
		for _, e := range events {
			if e.Actor == "tok_p1" && e.ProjectID == "p1" && strings.Contains(e.Detail["reason"], "cannot build in project "+target) &&
				strings.HasSuffix(e.Detail["procedure"], "/CreateBuild") {
				found = true
			}
		}
		if !found {
			t.Errorf("no audit event for p1's token refused in %s; events: %+v", target, events)
		}
	}
}

// GET /builds/<id> (build_url) answers the build as JSON to a caller that
// may see it, 401 without a token, and the same 404 for a build of another
// project or organization as for none.
func TestBuildPage(t *testing.T) {
	a := startAttackServer(t)
	api := cliv1connect.NewBuildServiceClient(http.DefaultClient, a.url)
	ctx := t.Context()
	res, err := api.CreateBuild(ctx, withBearer(&cliv1.CreateBuildRequest{ProjectId: "p1"}, a.p1Tok))
	if err != nil {
		t.Fatal(err)
	}
	id := res.Msg.BuildId
	getBuild := connect.NewClient[cliv1extra.GetBuildRequest, cliv1extra.GetBuildResponse](http.DefaultClient, a.url+"/depot.cli.v1.BuildService/GetBuild")
	got, err := getBuild.CallUnary(ctx, withBearer(&cliv1extra.GetBuildRequest{BuildId: id}, a.p1Tok))
	if err != nil || got.Msg.BuildUrl != res.Msg.BuildUrl || got.Msg.BuildUrl == "" {
		t.Fatalf("GetBuild build_url = %v, %v; CreateBuild said %q", got, err, res.Msg.BuildUrl)
	}
	get := func(url, authz string) (int, string, http.Header) {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if authz != "" {
			req.Header.Set("Authorization", authz)
		}
		r, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Body.Close()
		b, _ := io.ReadAll(r.Body)
		return r.StatusCode, string(b), r.Header
	}

	code, body, hdr := get(res.Msg.BuildUrl, "Bearer "+a.p1Tok)
	var v struct {
		BuildID     string    `json:"build_id"`
		ProjectID   string    `json:"project_id"`
		URL         string    `json:"url"`
		Status      string    `json:"status"`
		CreatedAt   time.Time `json:"created_at"`
		CachedSteps *int      `json:"cached_steps"`
		TotalSteps  *int      `json:"total_steps"`
	}
	if code != 200 || !strings.HasPrefix(hdr.Get("Content-Type"), "application/json") || json.Unmarshal([]byte(body), &v) != nil {
		t.Fatalf("GET %s with the project token: %d %s", res.Msg.BuildUrl, code, body)
	}
	if v.BuildID != id || v.ProjectID != "p1" || v.URL != res.Msg.BuildUrl || v.Status != "running" || v.CreatedAt.IsZero() || v.TotalSteps == nil || v.CachedSteps == nil {
		t.Errorf("build page JSON: %s", body)
	}
	// Basic, as registry clients send the token, works too.
	req, _ := http.NewRequest(http.MethodGet, res.Msg.BuildUrl, nil)
	req.SetBasicAuth("x-token", a.p1Tok)
	if code, body, _ := get(res.Msg.BuildUrl, req.Header.Get("Authorization")); code != 200 {
		t.Errorf("GET with Basic auth: %d %s", code, body)
	}

	hint := "use `kiln builds get "
	for _, authz := range []string{"", "Bearer kiln_prj_notatoken", "Basic !!"} {
		code, body, hdr := get(res.Msg.BuildUrl, authz)
		if code != 401 || !strings.Contains(body, hint+id+"` or send Authorization: Bearer <token>") || hdr.Get("WWW-Authenticate") == "" {
			t.Errorf("GET with %q: %d %s", authz, code, body)
		}
	}
	var bodies []string
	for _, other := range []string{"b2", "b3", "nosuchbuild"} {
		code, body, _ := get(a.url+"/builds/"+other, "Bearer "+a.p1Tok)
		if code != 404 || !strings.Contains(body, hint+other+"`") {
			t.Errorf("GET /builds/%s with p1's token: %d %s", other, code, body)
		}
		bodies = append(bodies, strings.Replace(body, other, "ID", 1))
	}
	if bodies[0] != bodies[1] || bodies[1] != bodies[2] {
		t.Errorf("404 answers differ: %q", bodies)
	}
	// The organization token reads any of its organization's builds, not
	// another organization's.
	adminSecret, _ := os.ReadFile(AdminTokenPath(a.s.cfg.DataDir))
	if code, body, _ := get(a.url+"/builds/b2", "Bearer "+strings.TrimSpace(string(adminSecret))); code != 200 {
		t.Errorf("GET /builds/b2 with the organization token: %d %s", code, body)
	}
	if code, _, _ := get(a.url+"/builds/b3", "Bearer "+strings.TrimSpace(string(adminSecret))); code != 404 {
		t.Errorf("GET /builds/b3 (another organization) with the organization token: %d", code)
	}
	// A hostile id is not echoed.
	if code, body, _ := get(a.url+"/builds/%3Cscript%3E", "Bearer "+a.p1Tok); code != 404 || strings.Contains(body, "<script>") {
		t.Errorf("GET /builds/<script>: %d %s", code, body)
	}
}

func errorsAs(err error, target **connect.Error) bool { return errors.As(err, target) }

func TestReachableBase(t *testing.T) {
	for in, want := range map[string]string{
		"http://127.0.0.1:7420":          "http://127.0.0.1:7420",
		"http://0.0.0.0:7420":            "http://127.0.0.1:7420",
		"http://[::]:7420":               "http://127.0.0.1:7420",
		"https://kiln.example.com/":      "https://kiln.example.com",
		"https://kiln.example.com/kiln":  "https://kiln.example.com/kiln",
		"http://[2001:db8::1]:7420/x/":   "http://[2001:db8::1]:7420/x",
		"https://0.0.0.0/behind-a-proxy": "https://127.0.0.1/behind-a-proxy",
	} {
		if got := reachableBase(in); got != want {
			t.Errorf("reachableBase(%q) = %q, want %q", in, got, want)
		}
	}
}
