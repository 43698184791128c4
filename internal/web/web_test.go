package web_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/audit"
	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/build"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/login"
	"github.com/kiln-dev/kiln/internal/project"
	"github.com/kiln-dev/kiln/internal/store"
	"github.com/kiln-dev/kiln/internal/web"
)

// world is a dashboard over a real store and the real build and project
// services: an organization with projects p1 and p2, a build in each, and
// a project token of p1; another organization o2 with a build b3.
type world struct {
	srv      *httptest.Server
	cfg      web.Config // the dashboard's, for another replica (replica)
	st       *store.SQLite
	logins   *login.Service
	audit    *audit.Recorder
	admin    auth.Principal
	tokens   *recordingTokens
	orgTok   string
	p1Tok    string
	p2Tok    string
	buildTok string
	// queue is each project's source-build queue, as the runner's Queued.
	queue sync.Map // project id → []string
}

func newWorld(t *testing.T, tls bool) *world {
	t.Helper()
	return newWorldWith(t, tls, nil)
}

// newWorldWith is newWorld with its dashboard's Config changed by edit.
func newWorldWith(t *testing.T, tls bool, edit func(*web.Config)) *world {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	st, err := store.OpenSQLite(ctx, filepath.Join(dir, "kiln.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if _, err := project.Bootstrap(ctx, st, filepath.Join(dir, "admin.token")); err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(filepath.Join(dir, "admin.token"))
	w := &world{st: st, orgTok: strings.TrimSpace(string(raw))}
	authn := &auth.Authenticator{Store: st}
	admin, err := authn.Authenticate(ctx, w.orgTok)
	if err != nil {
		t.Fatal(err)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	now := time.Now().UTC().Truncate(time.Millisecond)
	must(st.CreateProject(ctx, project.Project{ID: "p1", OrgID: admin.OrgID, Name: "one", CreatedAt: now}))
	must(st.CreateProject(ctx, project.Project{ID: "p2", OrgID: admin.OrgID, Name: "two", CreatedAt: now}))
	must(st.CreateOrganization(ctx, project.Organization{ID: "o2", Name: "other", CreatedAt: now}))
	must(st.CreateProject(ctx, project.Project{ID: "p3", OrgID: "o2", Name: "three", CreatedAt: now}))
	for _, b := range []build.Build{
		{ID: "b1", ProjectID: "p1", OrgID: admin.OrgID, Status: build.Failed, Error: "process did not complete: exit code: 3",
			CreatedAt: now.Add(-time.Minute), StartedAt: now.Add(-time.Minute), FinishedAt: now.Add(-50 * time.Second)},
		{ID: "b2", ProjectID: "p2", OrgID: admin.OrgID, Status: build.Running, CreatedAt: now, StartedAt: now, LastHealthAt: now},
		{ID: "b3", ProjectID: "p3", OrgID: "o2", Status: build.Running, CreatedAt: now, StartedAt: now, LastHealthAt: now},
	} {
		must(st.CreateBuild(ctx, b))
	}
	must(st.PutSteps(ctx, "b1", []build.Step{
		{Digest: "sha256:a", Name: "[1/2] COPY busybox /bin/busybox", Cached: true, StartedAt: now.Add(-59 * time.Second), CompletedAt: now.Add(-59 * time.Second)},
		{Digest: "sha256:b", Name: "[2/2] RUN exit 3", StartedAt: now.Add(-58 * time.Second), CompletedAt: now.Add(-55 * time.Second), Error: "exit code: 3"},
	}))
	must(st.AppendLogs(ctx, "b1", []build.LogLine{{Digest: "sha256:b", At: now.Add(-57 * time.Second), Message: "about to fail\n"}}))
	for _, tok := range []struct {
		id, project string
		kind        auth.TokenKind
		dst         *string
	}{{"tok_p1", "p1", auth.TokenProject, &w.p1Tok}, {"tok_p2", "p2", auth.TokenProject, &w.p2Tok}} {
		secret, hash := auth.NewSecret(tok.kind)
		must(st.CreateToken(ctx, auth.Token{ID: tok.id, Kind: tok.kind, OrgID: admin.OrgID, ProjectID: tok.project, SecretHash: hash, CreatedAt: now}))
		*tok.dst = secret
	}
	secret, hash := auth.NewSecret(auth.TokenBuild)
	must(st.CreateToken(ctx, auth.Token{ID: "tok_b2", Kind: auth.TokenBuild, OrgID: admin.OrgID, ProjectID: "p2", BuildID: "b2", SecretHash: hash, CreatedAt: now}))
	w.buildTok = secret

	logger := slog.New(slog.DiscardHandler)
	builds := build.NewService(st, nil, nil, build.Config{}, logger)
	projects := &project.Service{Store: st}
	w.admin, w.logins, w.tokens = admin, login.New(st, login.Config{}, logger), &recordingTokens{Service: projects}
	t.Cleanup(w.logins.Close)
	w.audit = audit.New(st, audit.Config{}, logger)
	images := func(ctx context.Context, p auth.Principal, projectID string, limit int) ([]web.Image, bool, error) {
		if projectID != "p1" {
			return nil, false, nil
		}
		week := 7 * 24 * time.Hour
		return []web.Image{{Tag: "v1", Digest: "sha256:feed", PushedAt: now, Size: 3 << 20, Expires: now.Add(week)},
			{Tag: "v0", Digest: "sha256:beef", PushedAt: now.Add(-week - time.Hour), Size: 1 << 20, Expires: now.Add(-time.Hour)}}, false, nil
	}
	cfg := web.Config{Builds: builds, Projects: projects, Logs: st, Authn: authn, Sessions: st, Logger: logger,
		QueuePosition: func(b build.Build) int { return 2 }, Logins: w.logins, Tokens: w.tokens, Audit: w.audit, Images: images,
		Trigger: func(b build.Build) string { return "trigger of " + b.ID }, Samples: st,
		Queue: func(projectID string) []string {
			ids, _ := w.queue.Load(projectID)
			ids2, _ := ids.([]string)
			return ids2
		}}
	if edit != nil {
		edit(&cfg)
	}
	w.cfg = cfg
	dash, err := web.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	dash.Mount(mux)
	mux.Handle("GET /builds/{id}", dash.BuildPage())
	mux.Handle("GET /shared/{token}", dash.SharedPage())
	if tls {
		w.srv = httptest.NewTLSServer(mux)
	} else {
		w.srv = httptest.NewServer(mux)
	}
	t.Cleanup(w.srv.Close)
	return w
}

// recordingTokens is the project service, recording the tokens deleted.
type recordingTokens struct {
	*project.Service
	mu      sync.Mutex
	deleted []string
}

func (r *recordingTokens) DeleteToken(ctx context.Context, p auth.Principal, id string) error {
	r.mu.Lock()
	r.deleted = append(r.deleted, id)
	r.mu.Unlock()
	return r.Service.DeleteToken(ctx, p, id)
}

// browser is a client with a cookie jar that does not follow redirects.
func (w *world) browser(t *testing.T) *http.Client {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	c := *w.srv.Client() // a copy: its own jar
	c.Jar = jar
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &c
}

type answer struct {
	code int
	body string
	hdr  http.Header
}

func do(t *testing.T, c *http.Client, method, u string, form url.Values, hdr map[string]string) answer {
	t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, u, body)
	if err != nil {
		t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	req.Header.Set("Accept", "text/html")
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	res, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return answer{res.StatusCode, string(b), res.Header}
}

// signIn signs c in with secret and returns the Set-Cookie line.
func (w *world) signIn(t *testing.T, c *http.Client, secret string) answer {
	t.Helper()
	return do(t, c, "POST", w.srv.URL+"/sign-in", url.Values{"token": {secret}}, map[string]string{"Origin": w.srv.URL})
}

var csrfRe = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

func csrfOf(t *testing.T, page string) string {
	t.Helper()
	m := csrfRe.FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no csrf field in the page:\n%s", page)
	}
	return m[1]
}

func TestSecurityHeadersAndNoInlineScript(t *testing.T) {
	w := newWorld(t, false)
	c := w.browser(t)
	for _, path := range []string{"/", "/sign-in", "/assets/app.js", "/assets/app.css"} {
		a := do(t, c, "GET", w.srv.URL+path, nil, nil)
		if a.code != 200 {
			t.Fatalf("GET %s: %d", path, a.code)
		}
		csp := a.hdr.Get("Content-Security-Policy")
		for _, want := range []string{"default-src 'none'", "script-src 'self'", "frame-ancestors 'none'", "form-action 'self'"} {
			if !strings.Contains(csp, want) {
				t.Errorf("GET %s: CSP %q lacks %q", path, csp, want)
			}
		}
		if strings.Contains(csp, "unsafe-inline") || strings.Contains(csp, "unsafe-eval") {
			t.Errorf("GET %s: CSP allows inline code: %q", path, csp)
		}
		if a.hdr.Get("X-Frame-Options") != "DENY" || a.hdr.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("GET %s: X-Frame-Options %q, X-Content-Type-Options %q", path, a.hdr.Get("X-Frame-Options"), a.hdr.Get("X-Content-Type-Options"))
		}
	}
	if a := do(t, c, "GET", w.srv.URL+"/assets/", nil, nil); a.code != http.StatusNotFound {
		t.Errorf("GET /assets/: %d, want no listing", a.code)
	}
	w.signIn(t, c, w.p1Tok)
	for _, path := range []string{"/sign-in", "/projects/p1", "/builds/b1"} {
		page := do(t, c, "GET", w.srv.URL+path, nil, nil).body
		if regexp.MustCompile(`<script(?:\s+[^>]*)?>[^<]`).MatchString(page) || strings.Contains(page, " style=") ||
			regexp.MustCompile(`\son[a-z]+=`).MatchString(page) {
			t.Errorf("%s has inline script or style:\n%s", path, page)
		}
		if strings.Contains(page, "http://") && !strings.Contains(page, "http://www.w3.org") || strings.Contains(page, "https://") {
			t.Errorf("%s refers to another host:\n%s", path, page)
		}
	}
}

func TestSignInCookieFlags(t *testing.T) {
	for _, tls := range []bool{false, true} {
		w := newWorld(t, tls)
		c := w.browser(t)
		a := w.signIn(t, c, w.p1Tok)
		if a.code != http.StatusSeeOther || a.hdr.Get("Location") != "/projects/p1" {
			t.Fatalf("sign in (tls %v): %d to %q", tls, a.code, a.hdr.Get("Location"))
		}
		set := a.hdr.Get("Set-Cookie")
		for _, want := range []string{"kiln_session=", "HttpOnly", "SameSite=Strict", "Path=/"} {
			if !strings.Contains(set, want) {
				t.Errorf("tls %v: Set-Cookie %q lacks %s", tls, set, want)
			}
		}
		if strings.Contains(set, "Secure") != tls {
			t.Errorf("tls %v: Set-Cookie %q: Secure must be set exactly over TLS", tls, set)
		}
		if strings.Contains(set, w.p1Tok) || strings.Contains(a.body, w.p1Tok) {
			t.Errorf("the token is in the sign-in answer")
		}
	}
}

func TestSignInRefusals(t *testing.T) {
	w := newWorld(t, false)
	c := w.browser(t)
	for name, secret := range map[string]string{"bad": "kiln_prj_nope", "build token": w.buildTok, "empty": ""} {
		if a := w.signIn(t, c, secret); a.code != http.StatusUnauthorized || a.hdr.Get("Set-Cookie") != "" {
			t.Errorf("sign in with %s: %d, cookie %q", name, a.code, a.hdr.Get("Set-Cookie"))
		}
	}
	// From another site's page: refused before the token is looked at.
	a := do(t, c, "POST", w.srv.URL+"/sign-in", url.Values{"token": {w.p1Tok}}, map[string]string{"Origin": "https://evil.example"})
	if a.code != http.StatusForbidden || a.hdr.Get("Set-Cookie") != "" {
		t.Errorf("cross-origin sign in: %d", a.code)
	}
	// A token in the URL signs nobody in.
	a = do(t, c, "GET", w.srv.URL+"/sign-in?token="+url.QueryEscape(w.p1Tok), nil, nil)
	if a.hdr.Get("Set-Cookie") != "" || strings.Contains(a.body, w.p1Tok) {
		t.Errorf("GET /sign-in?token=… started a session or echoed the token")
	}
	// Without a session, pages send the browser to sign in.
	for _, path := range []string{"/projects", "/projects/p1", "/builds/b1"} {
		a := do(t, c, "GET", w.srv.URL+path, nil, nil)
		if a.code != http.StatusSeeOther || !strings.HasPrefix(a.hdr.Get("Location"), "/sign-in") {
			t.Errorf("GET %s signed out: %d to %q", path, a.code, a.hdr.Get("Location"))
		}
	}
	if a := do(t, c, "GET", w.srv.URL+"/builds/b1/live", nil, nil); a.code != http.StatusUnauthorized {
		t.Errorf("GET live signed out: %d", a.code)
	}
}

// A project token's session sees its project and its builds; another
// project's build (of its organization or another) answers 404, the same
// as one that does not exist.
func TestProjectSessionSeesOnlyItsProject(t *testing.T) {
	w := newWorld(t, false)
	c := w.browser(t)
	w.signIn(t, c, w.p1Tok)
	a := do(t, c, "GET", w.srv.URL+"/projects/p1", nil, nil)
	if a.code != 200 || !strings.Contains(a.body, `data-build="b1"`) || strings.Contains(a.body, "/builds/b2") || strings.Contains(a.body, "/builds/b3") {
		t.Fatalf("project page: %d\n%s", a.code, a.body)
	}
	if !strings.Contains(a.body, "<td>trigger of b1</td>") {
		t.Errorf("the list has no trigger column:\n%s", a.body)
	}
	if a := do(t, c, "GET", w.srv.URL+"/builds/b1", nil, nil); a.code != 200 || !strings.Contains(a.body, `<li class="step failed"`) ||
		!strings.Contains(a.body, `<div class="err">exit code: 3</div>`) || !strings.Contains(a.body, `<span class="mark">CACHED</span>`) {
		t.Errorf("own build: %d\n%s", a.code, a.body)
	}
	var bodies []string
	for _, path := range []string{"/builds/b2", "/builds/b3", "/builds/nosuch", "/projects/p2", "/projects/p3", "/projects/nosuch"} {
		a := do(t, c, "GET", w.srv.URL+path, nil, nil)
		if a.code != http.StatusNotFound {
			t.Errorf("GET %s with p1's session: %d", path, a.code)
		}
		bodies = append(bodies, a.body)
	}
	if bodies[0] != bodies[1] || bodies[1] != bodies[2] || bodies[3] != bodies[4] || bodies[4] != bodies[5] {
		t.Errorf("404 answers differ between another project's and none")
	}
	for _, id := range []string{"b2", "b3", "nosuch"} {
		if a := do(t, c, "GET", w.srv.URL+"/builds/"+id+"/live", nil, nil); a.code != http.StatusNotFound {
			t.Errorf("live %s: %d", id, a.code)
		}
	}
	// The organization list is an organization token's.
	if a := do(t, c, "GET", w.srv.URL+"/projects", nil, nil); a.code != http.StatusSeeOther || a.hdr.Get("Location") != "/projects/p1" {
		t.Errorf("GET /projects with a project session: %d %q", a.code, a.hdr.Get("Location"))
	}
	org := w.browser(t)
	w.signIn(t, org, w.orgTok)
	a = do(t, org, "GET", w.srv.URL+"/projects", nil, nil)
	if a.code != 200 || !strings.Contains(a.body, "/projects/p1") || !strings.Contains(a.body, "/projects/p2") || strings.Contains(a.body, "/projects/p3") {
		t.Errorf("organization's projects: %d\n%s", a.code, a.body)
	}
	if a := do(t, org, "GET", w.srv.URL+"/builds/b3", nil, nil); a.code != http.StatusNotFound {
		t.Errorf("another organization's build with the org session: %d", a.code)
	}
	// The organization token reads a project's tokens (not their
	// secrets) and trust policies; a project token does not.
	if _, err := (&project.Service{Store: w.st}).AddTrustPolicy(context.Background(), w.admin, "p1",
		auth.TrustPolicy{Provider: auth.ProviderGitHub, Owner: "acme", Repo: "app", Ref: "refs/heads/main"}); err != nil {
		t.Fatal(err)
	}
	if a := do(t, org, "GET", w.srv.URL+"/projects/p1", nil, nil); !strings.Contains(a.body, "<code>tok_p1</code>") || strings.Contains(a.body, w.p1Tok) ||
		!strings.Contains(a.body, "<td>acme/app</td><td>refs/heads/main</td>") {
		t.Errorf("the organization's view of p1 lacks its tokens:\n%s", a.body)
	}
	if a := do(t, c, "GET", w.srv.URL+"/projects/p1", nil, nil); strings.Contains(a.body, "tok_p1") || strings.Contains(a.body, `id="tokens-h"`) {
		t.Errorf("a project session sees the project's tokens")
	}
}

func TestLiveBuild(t *testing.T) {
	w := newWorld(t, false)
	c := w.browser(t)
	w.signIn(t, c, w.p1Tok)
	a := do(t, c, "GET", w.srv.URL+"/builds/b1/live", nil, map[string]string{"Accept": "application/json"})
	if a.code != 200 || a.hdr.Get("Content-Type") != "application/json" {
		t.Fatalf("live: %d %s", a.code, a.body)
	}
	var v struct {
		Build struct {
			Status   string
			Terminal bool
		}
		Steps []struct{ Name, State, Error string }
		Logs  []struct{ Message string }
		Next  int
	}
	if err := json.Unmarshal([]byte(a.body), &v); err != nil {
		t.Fatal(err)
	}
	if v.Build.Status != "failed" || !v.Build.Terminal || len(v.Steps) != 2 || v.Steps[0].State != "cached" ||
		v.Steps[1].State != "failed" || v.Steps[1].Error != "exit code: 3" || len(v.Logs) != 1 || v.Next != 1 {
		t.Errorf("live: %s", a.body)
	}
	a = do(t, c, "GET", w.srv.URL+"/builds/b1/live?after=1", nil, nil)
	if !strings.Contains(a.body, `"logs":[]`) || strings.Contains(a.body, `"history"`) {
		t.Errorf("live after the last line: %s", a.body)
	}
	// A step's history: its runs in the project's earlier builds.
	ctx := context.Background()
	p1, _ := w.st.GetProject(ctx, "p1")
	at := time.Now().Add(-time.Hour).UTC().Truncate(time.Millisecond)
	if err := w.st.CreateBuild(ctx, build.Build{ID: "b0", ProjectID: "p1", OrgID: p1.OrgID, Status: build.Succeeded,
		CreatedAt: at, StartedAt: at, FinishedAt: at.Add(3 * time.Second)}); err != nil {
		t.Fatal(err)
	}
	if err := w.st.PutSteps(ctx, "b0", []build.Step{{Digest: "sha256:old", Name: "[2/2] RUN exit 3", StartedAt: at, CompletedAt: at.Add(2 * time.Second)}}); err != nil {
		t.Fatal(err)
	}
	// A session reuses the history it was sent for a while: a new one
	// sees b0.
	c2 := w.browser(t)
	w.signIn(t, c2, w.p1Tok)
	a = do(t, c2, "GET", w.srv.URL+"/builds/b1/live", nil, nil)
	if !strings.Contains(a.body, `"history":{"[2/2] RUN exit 3":[{"build":"b0","state":"done","ms":2000}]}`) {
		t.Errorf("live without the step's history: %s", a.body)
	}
}

func TestCSRF(t *testing.T) {
	w := newWorld(t, false)
	c := w.browser(t)
	w.signIn(t, c, w.p1Tok)
	page := do(t, c, "GET", w.srv.URL+"/projects/p1", nil, nil).body
	tok := csrfOf(t, page)
	wrong := tok[:len(tok)-1] + "x"
	if wrong == tok {
		wrong = tok[:len(tok)-1] + "y"
	}
	origin := map[string]string{"Origin": w.srv.URL}
	for name, tc := range map[string]struct {
		form url.Values
		hdr  map[string]string
	}{
		"no token":          {url.Values{}, origin},
		"wrong token":       {url.Values{"csrf": {wrong}}, origin},
		"another origin":    {url.Values{"csrf": {tok}}, map[string]string{"Origin": "https://evil.example"}},
		"cross-site fetch":  {url.Values{"csrf": {tok}}, map[string]string{"Sec-Fetch-Site": "cross-site"}},
		"token in a header": {url.Values{}, map[string]string{"Origin": w.srv.URL, "X-CSRF-Token": "nope"}},
	} {
		for _, path := range []string{"/sign-out", "/builds/b1/cancel", "/builds/b1/rebuild", "/builds/b1/share"} {
			if a := do(t, c, "POST", w.srv.URL+path, tc.form, tc.hdr); a.code != http.StatusForbidden {
				t.Errorf("POST %s, %s: %d", path, name, a.code)
			}
		}
	}
	// Still signed in: none of them did anything.
	if a := do(t, c, "GET", w.srv.URL+"/projects/p1", nil, nil); a.code != 200 {
		t.Fatalf("signed out by a forged request: %d", a.code)
	}
	// Another session's token is not this one's.
	other := w.browser(t)
	w.signIn(t, other, w.p1Tok)
	otherTok := csrfOf(t, do(t, other, "GET", w.srv.URL+"/projects/p1", nil, nil).body)
	if otherTok == tok {
		t.Fatal("two sessions share an anti-forgery token")
	}
	if a := do(t, c, "POST", w.srv.URL+"/sign-out", url.Values{"csrf": {otherTok}}, origin); a.code != http.StatusForbidden {
		t.Errorf("sign out with another session's token: %d", a.code)
	}
	// The right token, in the form or the header, works.
	if a := do(t, c, "POST", w.srv.URL+"/sign-out", nil, map[string]string{"Origin": w.srv.URL, "X-CSRF-Token": tok}); a.code != http.StatusSeeOther {
		t.Fatalf("sign out: %d %s", a.code, a.body)
	}
	if a := do(t, c, "GET", w.srv.URL+"/projects/p1", nil, nil); a.code != http.StatusSeeOther {
		t.Errorf("after sign out: %d", a.code)
	}
}

// Revoking the token behind a session ends the session on its next
// request.
func TestRevokedTokenEndsTheSession(t *testing.T) {
	w := newWorld(t, false)
	c := w.browser(t)
	w.signIn(t, c, w.p2Tok)
	if a := do(t, c, "GET", w.srv.URL+"/builds/b2", nil, nil); a.code != 200 {
		t.Fatalf("own build: %d", a.code)
	}
	if err := w.st.DeleteToken(context.Background(), "tok_p2"); err != nil {
		t.Fatal(err)
	}
	a := do(t, c, "GET", w.srv.URL+"/builds/b2", nil, nil)
	if a.code != http.StatusSeeOther || !strings.HasPrefix(a.hdr.Get("Location"), "/sign-in?ended=1") {
		t.Errorf("after revocation: %d to %q", a.code, a.hdr.Get("Location"))
	}
	if a := do(t, c, "GET", w.srv.URL+"/builds/b2/live", nil, nil); a.code != http.StatusUnauthorized {
		t.Errorf("live after revocation: %d", a.code)
	}
}

func TestNextStaysOnTheServer(t *testing.T) {
	w := newWorld(t, false)
	c := w.browser(t)
	for next, want := range map[string]string{"/builds/b1": "/builds/b1", "//evil.example/x": "/projects/p1",
		"https://evil.example": "/projects/p1", "/projects/p1?x": "/projects/p1"} {
		a := do(t, c, "POST", w.srv.URL+"/sign-in", url.Values{"token": {w.p1Tok}, "next": {next}}, map[string]string{"Origin": w.srv.URL})
		if a.hdr.Get("Location") != want {
			t.Errorf("next=%q: to %q, want %q", next, a.hdr.Get("Location"), want)
		}
	}
}

// Share makes the build's link (as ShareBuild); another project's build
// cannot be shared.
func TestShare(t *testing.T) {
	w := newWorld(t, false)
	c := w.browser(t)
	w.signIn(t, c, w.p1Tok)
	tok := csrfOf(t, do(t, c, "GET", w.srv.URL+"/builds/b1", nil, nil).body)
	origin := map[string]string{"Origin": w.srv.URL}
	a := do(t, c, "POST", w.srv.URL+"/builds/b1/share", url.Values{"csrf": {tok}}, origin)
	if a.code != 200 || !regexp.MustCompile(`id="share-url"[^>]*>.*<a href="/shared/[0-9A-Za-z]{32}">`).MatchString(a.body) {
		t.Fatalf("share: %d\n%s", a.code, a.body)
	}
	if a := do(t, c, "POST", w.srv.URL+"/builds/b2/share", url.Values{"csrf": {tok}}, origin); a.code != http.StatusNotFound {
		t.Errorf("share another project's build: %d", a.code)
	}
	link := regexp.MustCompile(`/shared/[0-9A-Za-z]{32}`).FindString(a.body)
	builds := build.NewService(w.st, nil, nil, build.Config{}, slog.New(slog.DiscardHandler))
	if _, err := builds.Shared(context.Background(), strings.TrimPrefix(link, "/shared/")); err != nil {
		t.Fatalf("the share link does not work: %v", err)
	}
	if a := do(t, c, "POST", w.srv.URL+"/builds/b1/unshare", url.Values{}, origin); a.code != http.StatusForbidden {
		t.Errorf("unshare without the anti-forgery token: %d", a.code)
	}
	if a := do(t, c, "POST", w.srv.URL+"/builds/b1/unshare", url.Values{"csrf": {tok}}, origin); a.code != 200 || !strings.Contains(a.body, `id="unshared"`) {
		t.Errorf("unshare: %d", a.code)
	}
	if _, err := builds.Shared(context.Background(), strings.TrimPrefix(link, "/shared/")); err == nil {
		t.Error("the share link still works after Stop sharing")
	}
}

// A share link renders the build page read-only for anyone: status,
// timings, the steps and resource peaks; no log, no project, no forms, no
// session; the dashboard's headers. Revoked or unknown: 404.
func TestSharedPage(t *testing.T) {
	w := newWorld(t, false)
	ctx := context.Background()
	now := time.Now().UTC()
	if err := w.st.PutResourceSamples(ctx, []build.ResourceSample{{BuildID: "b1", At: now, Interval: time.Second, CPUCores: 1.5,
		Memory: 300 << 20, MemoryLimit: 1 << 30}}); err != nil {
		t.Fatal(err)
	}
	builds := build.NewService(w.st, nil, nil, build.Config{}, slog.New(slog.DiscardHandler))
	link, err := builds.Share(ctx, w.admin, "b1")
	if err != nil {
		t.Fatal(err)
	}
	c := w.browser(t) // never signed in
	a := do(t, c, "GET", w.srv.URL+link, nil, nil)
	if a.code != 200 {
		t.Fatalf("GET %s: %d\n%s", link, a.code, a.body)
	}
	for _, want := range []string{`id="waterfall"`, `data-state="failed"`, "RUN exit 3", "exit code: 3", `id="resources"`, `id="status"`,
		`data-live="` + link + `/live"`, `id="duration"`} {
		if !strings.Contains(a.body, want) {
			t.Errorf("shared page lacks %q", want)
		}
	}
	for _, never := range []string{`id="log"`, "about to fail", "<form", `name="csrf"`, `id="share"`, `id="rebuild"`, `id="cancel"`,
		"/projects/p1", "trigger of", "Sign out"} {
		if strings.Contains(a.body, never) {
			t.Errorf("shared page shows %q", never)
		}
	}
	if a.hdr.Get("Content-Security-Policy") != w.csp(t) || a.hdr.Get("Referrer-Policy") != "no-referrer" ||
		a.hdr.Get("X-Frame-Options") != "DENY" || a.hdr.Get("Cache-Control") != "no-store" {
		t.Errorf("shared page headers: %v", a.hdr)
	}
	if len(a.hdr.Values("Set-Cookie")) > 0 {
		t.Errorf("shared page sets a cookie: %v", a.hdr.Values("Set-Cookie"))
	}

	live := do(t, c, "GET", w.srv.URL+link+"/live?after=0", nil, map[string]string{"Accept": "application/json"})
	var v struct {
		Build     struct{ ID, Status, ProjectID string }
		Steps     []struct{ State string }
		Logs      []any
		History   map[string]any
		Resources struct {
			Samples    int   `json:"samples"`
			PeakMemory int64 `json:"peak_memory_bytes"`
		}
	}
	if err := json.Unmarshal([]byte(live.body), &v); err != nil || live.code != 200 {
		t.Fatalf("shared live: %d %v\n%s", live.code, err, live.body)
	}
	if v.Build.ID != "b1" || v.Build.Status != "failed" || len(v.Steps) != 2 || len(v.Logs) != 0 || v.History != nil ||
		v.Resources.Samples != 1 || v.Resources.PeakMemory != 300<<20 || strings.Contains(live.body, "p1") {
		t.Errorf("shared live = %+v\n%s", v, live.body)
	}

	if err := builds.StopSharing(ctx, w.admin, "b1"); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{link, link + "/live", "/shared/" + strings.Repeat("a", 32), "/shared/nope", "/shared/nope/live"} {
		if a := do(t, c, "GET", w.srv.URL+path, nil, nil); a.code != http.StatusNotFound || a.hdr.Get("Content-Security-Policy") == "" {
			t.Errorf("GET %s after revoking: %d", path, a.code)
		}
	}
}

// csp is the policy the dashboard's sign-in page is served with.
func (w *world) csp(t *testing.T) string {
	t.Helper()
	return do(t, w.browser(t), "GET", w.srv.URL+"/sign-in", nil, nil).hdr.Get("Content-Security-Policy")
}

// The builds list pages 20 at a time, newest first, and filters by status.
func TestBuildsListPagesAndFilters(t *testing.T) {
	w := newWorld(t, false)
	ctx := context.Background()
	base := time.Now().UTC().Truncate(time.Millisecond)
	p1, err := w.st.GetProject(ctx, "p1")
	if err != nil {
		t.Fatal(err)
	}
	for i := range 24 {
		at := base.Add(time.Duration(i+1) * time.Second)
		st := build.Succeeded
		if i%2 == 1 {
			st = build.Canceled
		}
		if err := w.st.CreateBuild(ctx, build.Build{ID: fmt.Sprintf("x%02d", i), ProjectID: "p1", OrgID: p1.OrgID, Status: st,
			CreatedAt: at, StartedAt: at, FinishedAt: at.Add(time.Second)}); err != nil {
			t.Fatal(err)
		}
	}
	c := w.browser(t)
	w.signIn(t, c, w.p1Tok)
	rows := regexp.MustCompile(`<tr data-build="([^"]+)">`)
	older := regexp.MustCompile(`href="(/projects/p1\?page=[^"]+)" id="older"`)
	listed := func(body string) []string {
		var ids []string
		for _, m := range rows.FindAllStringSubmatch(body, -1) {
			ids = append(ids, m[1])
		}
		return ids
	}
	first := do(t, c, "GET", w.srv.URL+"/projects/p1", nil, nil).body
	if ids := listed(first); len(ids) != 20 || ids[0] != "x23" || ids[19] != "x04" {
		t.Fatalf("first page: %v", ids)
	}
	m := older.FindStringSubmatch(first)
	if m == nil {
		t.Fatal("no link to older builds")
	}
	second := do(t, c, "GET", w.srv.URL+strings.ReplaceAll(m[1], "&amp;", "&"), nil, nil).body
	if ids := listed(second); len(ids) != 5 || ids[0] != "x03" || ids[4] != "b1" || older.MatchString(second) {
		t.Errorf("second page: %v", ids)
	}
	if ids := listed(do(t, c, "GET", w.srv.URL+"/projects/p1?status=failed", nil, nil).body); len(ids) != 1 || ids[0] != "b1" {
		t.Errorf("failed builds: %v", ids)
	}
	if ids := listed(do(t, c, "GET", w.srv.URL+"/projects/p1?status=canceled", nil, nil).body); len(ids) != 12 {
		t.Errorf("canceled builds: %v", ids)
	}
	if ids := listed(do(t, c, "GET", w.srv.URL+"/projects/p1?status=<script>", nil, nil).body); len(ids) != 20 {
		t.Errorf("an unknown status filters nothing: %v", ids)
	}
}

func TestQueuedBuildShowsItsPosition(t *testing.T) {
	w := newWorld(t, false)
	ctx := context.Background()
	p1, _ := w.st.GetProject(ctx, "p1")
	if err := w.st.CreateBuild(ctx, build.Build{ID: "bq", ProjectID: "p1", OrgID: p1.OrgID, Status: build.Queued, Kind: build.KindSource,
		CreatedAt: time.Now().UTC()}); err != nil {
		t.Fatal(err)
	}
	c := w.browser(t)
	w.signIn(t, c, w.p1Tok)
	if a := do(t, c, "GET", w.srv.URL+"/projects/p1", nil, nil); !strings.Contains(a.body, `queued</span> <span class="muted">2 ahead</span>`) {
		t.Errorf("the list does not show the queue position:\n%s", a.body)
	}
	if a := do(t, c, "GET", w.srv.URL+"/builds/bq", nil, nil); !strings.Contains(a.body, `<dd id="queue">2 builds ahead</dd>`) {
		t.Errorf("the build page does not show the queue position:\n%s", a.body)
	}
	if a := do(t, c, "GET", w.srv.URL+"/projects/p1", nil, nil); !strings.Contains(a.body, `id="queue-empty"`) {
		t.Errorf("an empty queue is not said so:\n%s", a.body)
	}
	// The project's queue in start order, with position and age; what is
	// no longer queued, or is another project's, is left out.
	if err := w.st.CreateBuild(ctx, build.Build{ID: "bq2", ProjectID: "p1", OrgID: p1.OrgID, Status: build.Queued, Kind: build.KindSource,
		CreatedAt: time.Now().UTC().Add(-90 * time.Second)}); err != nil {
		t.Fatal(err)
	}
	w.queue.Store("p1", []string{"bq", "b1", "b2", "gone", "bq2"})
	a := do(t, c, "GET", w.srv.URL+"/projects/p1", nil, nil)
	rows := regexp.MustCompile(`(?s)<tr data-build="(\w+)">\s*<td class="num">(\d+)</td>.*?<td class="num">([^<]+)</td>\s*<td class="num">(\d+)</td>\s*</tr>`).
		FindAllStringSubmatch(a.body[strings.Index(a.body, `<table id="queue">`):], -1)
	if len(rows) != 2 || rows[0][1] != "bq" || rows[0][2] != "1" || rows[1][1] != "bq2" || rows[1][2] != "2" ||
		!strings.HasPrefix(rows[1][3], "1m3") || rows[0][4] != "2" {
		t.Errorf("queue rows = %q\n%s", rows, a.body)
	}
	if a := do(t, c, "GET", w.srv.URL+"/builds/bq/live", nil, nil); !strings.Contains(a.body, `"queue_ahead":2`) {
		t.Errorf("live: %s", a.body)
	}
	if a := do(t, c, "GET", w.srv.URL+"/builds/b1/live", nil, nil); !strings.Contains(a.body, `"queue_ahead":-1`) {
		t.Errorf("live of a finished build: %s", a.body)
	}
}

// Signing in with an administrator's approval: the browser starts a device
// login, an administrator approves its code, the browser's poll gets a
// session for the login's new organization token, and signing out deletes
// that token.
func TestDeviceSignIn(t *testing.T) {
	w := newWorld(t, false)
	c := w.browser(t)
	origin := map[string]string{"Origin": w.srv.URL}
	if a := do(t, c, "POST", w.srv.URL+"/sign-in/device/wait", nil, origin); a.code != http.StatusNotFound {
		t.Errorf("wait without a login: %d %s", a.code, a.body)
	}
	if a := do(t, c, "POST", w.srv.URL+"/sign-in/device", nil, map[string]string{"Origin": "https://evil.example"}); a.code != http.StatusForbidden {
		t.Errorf("cross-origin device sign-in: %d", a.code)
	}
	a := do(t, c, "POST", w.srv.URL+"/sign-in/device", nil, origin)
	m := regexp.MustCompile(`id="approval-id">([a-z0-9]{26})<`).FindStringSubmatch(a.body)
	if a.code != 200 || m == nil || !strings.Contains(a.hdr.Get("Set-Cookie"), "kiln_login=") || !strings.Contains(a.hdr.Get("Set-Cookie"), "HttpOnly") {
		t.Fatalf("start: %d %q\n%s", a.code, a.hdr.Get("Set-Cookie"), a.body)
	}
	if a := do(t, c, "POST", w.srv.URL+"/sign-in/device/wait", nil, map[string]string{"Origin": "https://evil.example"}); a.code != http.StatusForbidden {
		t.Errorf("cross-origin wait: %d", a.code)
	}
	go func() {
		time.Sleep(300 * time.Millisecond)
		if _, err := w.logins.Approve(context.Background(), w.admin, m[1]); err != nil {
			t.Errorf("approve: %v", err)
		}
	}()
	a = do(t, c, "POST", w.srv.URL+"/sign-in/device/wait", nil, origin)
	if a.code != 200 || !strings.Contains(a.body, `"done":true`) || !strings.Contains(a.body, `"next":"/projects"`) ||
		!strings.Contains(a.hdr.Get("Set-Cookie"), "kiln_session=") || strings.Contains(a.body, "kiln_org_") {
		t.Fatalf("wait: %d %q %s", a.code, a.hdr.Get("Set-Cookie"), a.body)
	}
	page := do(t, c, "GET", w.srv.URL+"/projects", nil, nil)
	if page.code != 200 || !strings.Contains(page.body, "/projects/p1") {
		t.Fatalf("projects after device sign-in: %d", page.code)
	}
	if a := do(t, c, "POST", w.srv.URL+"/sign-in/device/wait", nil, origin); a.code != http.StatusNotFound {
		t.Errorf("the login is still pending after it signed in: %d", a.code)
	}
	if a := do(t, c, "POST", w.srv.URL+"/sign-out", url.Values{"csrf": {csrfOf(t, page.body)}}, origin); a.code != http.StatusSeeOther {
		t.Fatalf("sign out: %d", a.code)
	}
	w.tokens.mu.Lock()
	deleted := w.tokens.deleted
	w.tokens.mu.Unlock()
	if len(deleted) != 1 || deleted[0] == w.admin.TokenID {
		t.Errorf("signing out deleted tokens %v, want the device login's", deleted)
	}
	// A pasted token's session signs out without deleting anything.
	w.signIn(t, c, w.orgTok)
	page = do(t, c, "GET", w.srv.URL+"/projects", nil, nil)
	do(t, c, "POST", w.srv.URL+"/sign-out", url.Values{"csrf": {csrfOf(t, page.body)}}, origin)
	if len(w.tokens.deleted) != 1 {
		t.Errorf("signing out of a pasted token's session deleted tokens: %v", w.tokens.deleted)
	}
}

// The audit log is an organization token's; a project's images show on
// its page.
func TestAuditPageAndImages(t *testing.T) {
	w := newWorld(t, false)
	w.audit.Record(context.Background(), audit.Event{Kind: audit.KindTokenCreated, OrgID: w.admin.OrgID, ProjectID: "p1",
		Actor: w.admin.TokenID, Detail: map[string]string{"token_id": "tok_p1", "kind": "project"}})
	org := w.browser(t)
	w.signIn(t, org, w.orgTok)
	a := do(t, org, "GET", w.srv.URL+"/audit", nil, nil)
	if a.code != 200 || !strings.Contains(a.body, "<td>token_created</td>") || !strings.Contains(a.body, "kind=project token_id=tok_p1") {
		t.Errorf("audit page: %d\n%s", a.code, a.body)
	}
	prj := w.browser(t)
	w.signIn(t, prj, w.p1Tok)
	if a := do(t, prj, "GET", w.srv.URL+"/audit", nil, nil); a.code != http.StatusNotFound {
		t.Errorf("audit page with a project session: %d", a.code)
	}
	if a := do(t, prj, "GET", w.srv.URL+"/projects/p1", nil, nil); !strings.Contains(a.body, "<code>v1</code>") || !strings.Contains(a.body, "3.0 MiB") {
		t.Errorf("the project page lacks its images:\n%s", a.body)
	}
	// Each image's expiry: its push plus the retention; one past it is
	// due for the next collection.
	a = do(t, prj, "GET", w.srv.URL+"/projects/p1", nil, nil)
	for _, re := range []string{`id="retention">Images are kept <strong>7d</strong>`,
		`data-tag="v1">(?:.|\n)*?class="expires"><time datetime="[^"]+">[^<]+</time> <span class="muted">in 6d 23h</span>`,
		`data-tag="v0">(?:.|\n)*?class="expires"><time datetime="[^"]+">[^<]+</time> <span class="badge warn">due</span>`} {
		if !regexp.MustCompile(re).MatchString(a.body) {
			t.Errorf("the project page lacks %s:\n%s", re, a.body)
		}
	}
}

// One poll's answer is bounded: huge log lines are clipped, and past a
// byte budget the poll stops and says there is more; a step's error and
// the build's error are clipped too.
func TestLiveBuildIsBounded(t *testing.T) {
	w := newWorld(t, false)
	ctx := context.Background()
	huge := strings.Repeat("\x01x", 1<<20) // 2 MiB, 6 bytes a control byte in JSON
	var lines []build.LogLine
	for range 300 {
		lines = append(lines, build.LogLine{Digest: "sha256:b", At: time.Now(), Message: huge})
	}
	if err := w.st.AppendLogs(ctx, "b1", lines); err != nil {
		t.Fatal(err)
	}
	if err := w.st.PutSteps(ctx, "b1", []build.Step{{Digest: "sha256:b", Name: "[2/2] RUN exit 3",
		StartedAt: time.Now(), CompletedAt: time.Now(), Error: huge}}); err != nil {
		t.Fatal(err)
	}
	c := w.browser(t)
	w.signIn(t, c, w.p1Tok)
	a := do(t, c, "GET", w.srv.URL+"/builds/b1/live", nil, nil)
	if a.code != 200 {
		t.Fatalf("live: %d", a.code)
	}
	if len(a.body) > 2<<20 {
		t.Errorf("one poll answered %d bytes", len(a.body))
	}
	var v struct {
		Steps []struct{ Error string }
		Logs  []struct{ Message string }
		More  bool
		Next  int
	}
	if err := json.Unmarshal([]byte(a.body), &v); err != nil {
		t.Fatal(err)
	}
	if !v.More || len(v.Logs) < 2 || len(v.Logs) > 200 {
		t.Errorf("more %v with %d lines", v.More, len(v.Logs))
	}
	for _, l := range v.Logs[1:] {
		if len(l.Message) > 20<<10 || !strings.HasSuffix(l.Message, "… (clipped)") {
			t.Fatalf("a line of %d bytes, not clipped: %.40q", len(l.Message), l.Message)
		}
	}
	for _, s := range v.Steps {
		if len(s.Error) > 20<<10 {
			t.Errorf("a step's error of %d bytes", len(s.Error))
		}
	}
	page := do(t, c, "GET", w.srv.URL+"/builds/b1", nil, nil)
	if len(page.body) > 1<<20 {
		t.Errorf("the build page is %d bytes", len(page.body))
	}
}

// A tenant's text reaches the page without ANSI escapes, \r or other
// controls, and with its bidirectional overrides shown, not obeyed.
func TestTenantTextIsCleaned(t *testing.T) {
	w := newWorld(t, false)
	ctx := context.Background()
	dirty := "a\x1b[31mred\x1b[0m\r\x1b[\n\x1b]8;;http://evil\x07link\x1b]8;;\x07\tb\x00\x7f\u0085c\u202egnp.exe\u2066d\n"
	want := "ared\nlink\tbc<U+202E>gnp.exe<U+2066>d\n"
	if err := w.st.AppendLogs(ctx, "b1", []build.LogLine{{Digest: "sha256:b", At: time.Now(), Message: dirty}}); err != nil {
		t.Fatal(err)
	}
	if err := w.st.PutSteps(ctx, "b1", []build.Step{{Digest: "sha256:b", Name: "[2/2] RUN exit 3",
		StartedAt: time.Now(), CompletedAt: time.Now(), Error: dirty}}); err != nil {
		t.Fatal(err)
	}
	c := w.browser(t)
	w.signIn(t, c, w.p1Tok)
	a := do(t, c, "GET", w.srv.URL+"/builds/b1/live", nil, nil)
	var v struct {
		Steps []struct{ Error string }
		Logs  []struct{ Message string }
	}
	if err := json.Unmarshal([]byte(a.body), &v); err != nil {
		t.Fatal(err)
	}
	if len(v.Logs) != 2 || v.Logs[1].Message != want {
		t.Errorf("log lines: %q", v.Logs)
	}
	if len(v.Steps) != 2 || v.Steps[1].Error != want {
		t.Errorf("steps: %+v", v.Steps)
	}
	page := do(t, c, "GET", w.srv.URL+"/builds/b1", nil, nil)
	if strings.ContainsAny(page.body, "\x1b\r\u202e") {
		t.Errorf("the build page keeps a control")
	}
}

// fakeLogins is a device login service whose Finish answers err, once
// each, then "".
type fakeLogins struct {
	mu   sync.Mutex
	errs []error
}

func (f *fakeLogins) Start(ctx context.Context, peer string) (login.Started, error) {
	return login.Started{ID: "secret-login-id", ApprovalID: "abcdefghijklmnopqrstuvwxyz", Code: "ABCD-EFGH",
		ExpiresAt: time.Now().Add(10 * time.Minute)}, nil
}

func (f *fakeLogins) Finish(ctx context.Context, id string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.errs) == 0 {
		return "", errors.New("no more")
	}
	err := f.errs[0]
	f.errs = f.errs[1:]
	return "", err
}

// A device login's poll never shows an unauthenticated browser an
// internal error's text.
func TestDeviceSignInHidesInternalErrors(t *testing.T) {
	logins := &fakeLogins{errs: []error{errors.New("open /var/lib/kiln/kiln.db: disk I/O error")}}
	w := newWorldWith(t, false, func(c *web.Config) { c.Logins = logins })
	c := w.browser(t)
	origin := map[string]string{"Origin": w.srv.URL}
	if a := do(t, c, "POST", w.srv.URL+"/sign-in/device", nil, origin); a.code != 200 {
		t.Fatalf("start: %d", a.code)
	}
	a := do(t, c, "POST", w.srv.URL+"/sign-in/device/wait", nil, origin)
	if strings.Contains(a.body, "kiln.db") || !strings.Contains(a.body, "internal error; see the server log") {
		t.Errorf("wait: %d %s", a.code, a.body)
	}
}

// Sign-ins from one address are rate-limited, and refused ones recorded
// as the API's are (Config.Denied).
func TestSignInRateLimitAndDenied(t *testing.T) {
	var mu sync.Mutex
	var denied []string
	w := newWorldWith(t, false, func(c *web.Config) {
		c.Denied = func(ctx context.Context, peer, reason string) {
			mu.Lock()
			denied = append(denied, peer+" "+reason)
			mu.Unlock()
		}
	})
	c := w.browser(t)
	if a := w.signIn(t, c, "kiln_org_not-a-token"); a.code != http.StatusUnauthorized {
		t.Fatalf("bad token: %d", a.code)
	}
	mu.Lock()
	if len(denied) != 1 || strings.Contains(denied[0], "not-a-token") || !strings.HasPrefix(denied[0], "127.0.0.1:") {
		t.Errorf("denied: %q", denied)
	}
	mu.Unlock()
	var last answer
	for range 30 {
		if last = w.signIn(t, c, w.p1Tok); last.code == http.StatusTooManyRequests {
			break
		}
	}
	if last.code != http.StatusTooManyRequests || last.hdr.Get("Retry-After") == "" {
		t.Errorf("30 sign-ins at once: the last %d, Retry-After %q", last.code, last.hdr.Get("Retry-After"))
	}
}

// Behind a TLS-terminating proxy (plain http in, an https public URL),
// the session cookie is still Secure and __Host-, the public origin may
// sign in, and HSTS is sent.
func TestBehindATLSProxy(t *testing.T) {
	w := newWorldWith(t, false, func(c *web.Config) { c.PublicURL = func() string { return "https://kiln.example" } })
	c := w.browser(t)
	a := do(t, c, "POST", w.srv.URL+"/sign-in", url.Values{"token": {w.p1Tok}}, map[string]string{"Origin": "https://kiln.example"})
	set := a.hdr.Get("Set-Cookie")
	if a.code != http.StatusSeeOther || !strings.HasPrefix(set, "__Host-kiln_session=") || !strings.Contains(set, "Secure") ||
		!strings.Contains(set, "Path=/") {
		t.Fatalf("sign in from the public origin: %d %q", a.code, set)
	}
	if !strings.HasPrefix(a.hdr.Get("Strict-Transport-Security"), "max-age=") {
		t.Errorf("no HSTS: %v", a.hdr)
	}
	if a := do(t, c, "POST", w.srv.URL+"/sign-in", url.Values{"token": {w.p1Tok}}, map[string]string{"Origin": "https://evil.example"}); a.code != http.StatusForbidden {
		t.Errorf("sign in from another origin: %d", a.code)
	}
	// The proxy forwards the browser's cookie: it is read by its name.
	id := strings.TrimPrefix(strings.SplitN(set, ";", 2)[0], "__Host-kiln_session=")
	a = do(t, w.srv.Client(), "GET", w.srv.URL+"/builds/b1/live", nil, map[string]string{"Cookie": "__Host-kiln_session=" + id})
	if a.code != 200 {
		t.Errorf("live with the __Host- cookie: %d", a.code)
	}
	// Plain http without a public URL keeps the plain name and no HSTS.
	w2 := newWorld(t, false)
	a = w2.signIn(t, w2.browser(t), w2.p1Tok)
	if set := a.hdr.Get("Set-Cookie"); !strings.HasPrefix(set, "kiln_session=") || strings.Contains(set, "Secure") || a.hdr.Get("Strict-Transport-Security") != "" {
		t.Errorf("plain http: %q %v", set, a.hdr)
	}
}

// A transient refusal of a device login's poll (too many waiting, the
// server shutting down) keeps the login pending: the page polls again.
func TestDeviceSignInTransientErrorsPollAgain(t *testing.T) {
	logins := &fakeLogins{errs: []error{
		fmt.Errorf("server is shutting down: %w", errdefs.ErrUnavailable),
		fmt.Errorf("too many clients are waiting on this login: %w", errdefs.ErrExhausted),
		fmt.Errorf("login expired: %w", errdefs.ErrExpired),
	}}
	w := newWorldWith(t, false, func(c *web.Config) { c.Logins = logins })
	c := w.browser(t)
	origin := map[string]string{"Origin": w.srv.URL}
	if a := do(t, c, "POST", w.srv.URL+"/sign-in/device", nil, origin); a.code != 200 {
		t.Fatalf("start: %d", a.code)
	}
	for _, want := range []int{http.StatusServiceUnavailable, http.StatusTooManyRequests} {
		a := do(t, c, "POST", w.srv.URL+"/sign-in/device/wait", nil, origin)
		if a.code != want || a.hdr.Get("Retry-After") == "" || strings.Contains(a.body, `"error"`) {
			t.Errorf("wait: %d %q %s, want %d and poll again", a.code, a.hdr.Get("Retry-After"), a.body, want)
		}
	}
	a := do(t, c, "POST", w.srv.URL+"/sign-in/device/wait", nil, origin)
	if !strings.Contains(a.body, "login expired") {
		t.Errorf("the expired login: %d %s", a.code, a.body)
	}
	if a := do(t, c, "POST", w.srv.URL+"/sign-in/device/wait", nil, origin); a.code != http.StatusNotFound {
		t.Errorf("an expired login is still pending: %d", a.code)
	}
}

// A device login's token ends with its session even without signing out:
// here a new sign-in in the same browser replaces the session.
func TestDeviceLoginTokenEndsWithItsSession(t *testing.T) {
	w := newWorld(t, false)
	c := w.browser(t)
	origin := map[string]string{"Origin": w.srv.URL}
	a := do(t, c, "POST", w.srv.URL+"/sign-in/device", nil, origin)
	m := regexp.MustCompile(`id="approval-id">([a-z0-9]{26})<`).FindStringSubmatch(a.body)
	if m == nil {
		t.Fatalf("start: %d", a.code)
	}
	if _, err := w.logins.Approve(context.Background(), w.admin, m[1]); err != nil {
		t.Fatal(err)
	}
	if a := do(t, c, "POST", w.srv.URL+"/sign-in/device/wait", nil, origin); !strings.Contains(a.body, `"done":true`) {
		t.Fatalf("wait: %d %s", a.code, a.body)
	}
	w.signIn(t, c, w.p1Tok)
	deadline := time.Now().Add(5 * time.Second)
	for {
		w.tokens.mu.Lock()
		n := len(w.tokens.deleted)
		w.tokens.mu.Unlock()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the replaced session's minted token was not deleted (%d deletions)", n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// countingBuilds counts Usage calls.
type countingBuilds struct {
	web.Builds
	mu    sync.Mutex
	usage int
}

func (c *countingBuilds) Usage(ctx context.Context, p auth.Principal, projects []project.Project, period build.Period, withSaved bool) ([]build.Usage, error) {
	c.mu.Lock()
	c.usage++
	c.mu.Unlock()
	return c.Builds.Usage(ctx, p, projects, period, withSaved)
}

// The projects page computes an organization's usage (a disk walk and
// thousands of builds) once a minute, not on every load.
func TestProjectsPageUsageIsCached(t *testing.T) {
	var cb *countingBuilds
	w := newWorldWith(t, false, func(c *web.Config) { cb = &countingBuilds{Builds: c.Builds}; c.Builds = cb })
	c := w.browser(t)
	w.signIn(t, c, w.orgTok)
	var wg sync.WaitGroup
	for range 5 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if a := do(t, c, "GET", w.srv.URL+"/projects", nil, nil); a.code != 200 || !strings.Contains(a.body, "/projects/p2") {
				t.Errorf("projects: %d", a.code)
			}
		}()
	}
	wg.Wait()
	for range 3 {
		do(t, c, "GET", w.srv.URL+"/projects", nil, nil)
	}
	cb.mu.Lock()
	defer cb.mu.Unlock()
	if cb.usage != 1 {
		t.Errorf("8 loads of the projects page computed the usage %d times", cb.usage)
	}
}

// countingPolls counts what a poll reads.
type countingPolls struct {
	web.Builds
	mu                      sync.Mutex
	steps, resources, pages int
}

func (c *countingPolls) Steps(ctx context.Context, p auth.Principal, id string) ([]build.Step, error) {
	c.mu.Lock()
	c.steps++
	c.mu.Unlock()
	return c.Builds.Steps(ctx, p, id)
}

func (c *countingPolls) Resources(ctx context.Context, p auth.Principal, id string) (build.Resources, error) {
	c.mu.Lock()
	c.resources++
	c.mu.Unlock()
	return c.Builds.Resources(ctx, p, id)
}

func (c *countingPolls) Page(ctx context.Context, p auth.Principal, projectID string, pageSize int, pageToken string) ([]build.Build, string, error) {
	c.mu.Lock()
	c.pages++
	c.mu.Unlock()
	return c.Builds.Page(ctx, p, projectID, pageSize, pageToken)
}

// Polls are rate-limited per session (429, Retry-After), a session's
// first polls compute the step history once, and a build's steps and
// resources are reused between polls close together.
func TestLivePollsAreCheap(t *testing.T) {
	var cp *countingPolls
	w := newWorldWith(t, false, func(c *web.Config) { cp = &countingPolls{Builds: c.Builds}; c.Builds = cp })
	c := w.browser(t)
	w.signIn(t, c, w.p1Tok)
	var last answer
	n := 0
	for ; n < 30; n++ {
		if last = do(t, c, "GET", w.srv.URL+"/builds/b1/live", nil, nil); last.code != 200 {
			break
		}
	}
	if last.code != http.StatusTooManyRequests || last.hdr.Get("Retry-After") == "" {
		t.Fatalf("30 polls at once: the last %d, Retry-After %q", last.code, last.hdr.Get("Retry-After"))
	}
	cp.mu.Lock()
	defer cp.mu.Unlock()
	if cp.pages != 1 || cp.steps > 3 || cp.resources > 2 {
		t.Errorf("%d first polls read the project's builds %d times, steps %d, resources %d", n, cp.pages, cp.steps, cp.resources)
	}
}

// replica serves another dashboard on the world's store: another kiln
// serve replica, or this one restarted.
func (w *world) replica(t *testing.T) *httptest.Server {
	t.Helper()
	dash, err := web.New(w.cfg)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	dash.Mount(mux)
	mux.Handle("GET /builds/{id}", dash.BuildPage())
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

// A browser whose requests a load balancer spreads over two replicas:
// the device login it starts on one finishes on the other, the session
// works on both (its CSRF token too), and signing out on one ends it on
// both, deleting the login's token.
func TestSessionsAcrossReplicas(t *testing.T) {
	w := newWorld(t, false)
	other := w.replica(t)
	c := w.browser(t) // cookies do not keep to a port: both replicas get them
	a := do(t, c, "POST", w.srv.URL+"/sign-in/device", nil, map[string]string{"Origin": w.srv.URL})
	m := regexp.MustCompile(`id="approval-id">([a-z0-9]{26})<`).FindStringSubmatch(a.body)
	if m == nil {
		t.Fatalf("start: %d", a.code)
	}
	if _, err := w.logins.Approve(context.Background(), w.admin, m[1]); err != nil {
		t.Fatal(err)
	}
	if a := do(t, c, "POST", other.URL+"/sign-in/device/wait", nil, map[string]string{"Origin": other.URL}); !strings.Contains(a.body, `"done":true`) {
		t.Fatalf("wait on the other replica: %d %s", a.code, a.body)
	}
	if a := do(t, c, "GET", w.srv.URL+"/projects", nil, nil); a.code != 200 {
		t.Fatalf("projects on the first replica: %d", a.code)
	}
	page := do(t, c, "GET", other.URL+"/builds/b1", nil, nil)
	if page.code != 200 {
		t.Fatalf("a build on the other replica: %d", page.code)
	}
	u, _ := url.Parse(w.srv.URL)
	kept := c.Jar.Cookies(u)
	a = do(t, c, "POST", w.srv.URL+"/sign-out", url.Values{"csrf": {csrfOf(t, page.body)}}, map[string]string{"Origin": w.srv.URL})
	if a.code != http.StatusSeeOther || a.hdr.Get("Location") != "/sign-in" {
		t.Fatalf("sign out with the other replica's form: %d %q", a.code, a.hdr.Get("Location"))
	}
	w.tokens.mu.Lock()
	deleted := len(w.tokens.deleted)
	w.tokens.mu.Unlock()
	if deleted != 1 {
		t.Errorf("the login's token was not deleted at sign-out (%d deletions)", deleted)
	}
	// A browser holding on to the cookie: no replica takes it.
	if len(kept) == 0 {
		t.Fatal("no cookie")
	}
	for _, u := range []string{w.srv.URL, other.URL} {
		a := do(t, c, "GET", u+"/projects", nil, map[string]string{"Cookie": kept[0].Name + "=" + kept[0].Value})
		if a.code != http.StatusSeeOther || !strings.HasPrefix(a.hdr.Get("Location"), "/sign-in") {
			t.Errorf("%s after sign-out: %d", u, a.code)
		}
	}
}
