package registry

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/build"
	"github.com/kiln-dev/kiln/internal/project"
	"github.com/kiln-dev/kiln/internal/store"
)

// fixture is a registry on an httptest server over a real SQLite store,
// with org o1 (projects p1, p2) and org o2 (project q1).
type fixture struct {
	t   *testing.T
	st  *store.SQLite
	reg *Registry
	srv *httptest.Server
	// host is the server's host:port, for references.
	host string
	// clock is the registry's (Config.Now); tests advance it instead of
	// sleeping.
	clock *testClock
}

func newFixture(t *testing.T, mod ...func(*Config)) *fixture {
	t.Helper()
	ctx := context.Background()
	st, err := store.OpenSQLite(ctx, filepath.Join(t.TempDir(), "kiln.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	for _, o := range []string{"o1", "o2"} {
		if err := st.CreateOrganization(ctx, project.Organization{ID: o, Name: o, CreatedAt: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	for id, org := range map[string]string{"p1": "o1", "p2": "o1", "q1": "o2"} {
		if err := st.CreateProject(ctx, project.Project{ID: id, OrgID: org, Name: id, CreatedAt: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	clock := &testClock{}
	cfg := Config{Dir: t.TempDir(), Store: st, Authn: &auth.Authenticator{Store: st}, Now: clock.now}
	for _, m := range mod {
		m(&cfg)
	}
	reg, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	srv := httptest.NewServer(reg)
	t.Cleanup(srv.Close)
	return &fixture{t: t, st: st, reg: reg, srv: srv, host: strings.TrimPrefix(srv.URL, "http://"), clock: clock}
}

// token stores a token of kind in org (scoped to project for project,
// build and pull tokens) and returns its secret.
func (f *fixture) token(kind auth.TokenKind, org, project string) string {
	f.t.Helper()
	secret, hash := auth.NewSecret(kind)
	tok := auth.Token{ID: "tok_" + auth.RandomString(8), Kind: kind, OrgID: org, ProjectID: project, SecretHash: hash, CreatedAt: time.Now()}
	if kind == auth.TokenBuild {
		// A build token works only while its build runs.
		tok.BuildID = "b_" + auth.RandomString(6)
		b := build.Build{ID: tok.BuildID, ProjectID: project, OrgID: org, Status: build.Running, CreatedAt: time.Now()}
		if err := f.st.CreateBuild(context.Background(), b); err != nil {
			f.t.Fatal(err)
		}
	}
	if err := f.st.CreateToken(context.Background(), tok); err != nil {
		f.t.Fatal(err)
	}
	return secret
}

func (f *fixture) ref(repo string) name.Reference {
	f.t.Helper()
	r, err := name.ParseReference(f.host+"/"+repo, name.Insecure)
	if err != nil {
		f.t.Fatal(err)
	}
	return r
}

func basicAuth(secret string) remote.Option {
	return remote.WithAuth(&authn.Basic{Username: "x-token", Password: secret})
}

// do sends a raw request; auth is "" or a full Authorization value.
func (f *fixture) do(method, path, authz string, body []byte, hdr ...string) *http.Response {
	f.t.Helper()
	req, err := http.NewRequest(method, f.srv.URL+path, bytes.NewReader(body))
	if err != nil {
		f.t.Fatal(err)
	}
	if authz != "" {
		req.Header.Set("Authorization", authz)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		f.t.Fatal(err)
	}
	return res
}

func basic(secret string) string {
	req, _ := http.NewRequest("GET", "/", nil)
	req.SetBasicAuth("x-token", secret)
	return req.Header.Get("Authorization")
}

// ociCode reads the first error code of an OCI error body.
func ociCode(t *testing.T, res *http.Response) string {
	t.Helper()
	defer res.Body.Close()
	var body struct {
		Errors []struct{ Code string }
	}
	b, _ := io.ReadAll(res.Body)
	if err := json.Unmarshal(b, &body); err != nil || len(body.Errors) == 0 {
		return "(no OCI error: " + string(b) + ")"
	}
	return body.Errors[0].Code
}

// An image pushed with go-containerregistry (which follows the bearer
// challenge to the token endpoint with x-token Basic credentials) reads
// back identical.
func TestPushPullThroughTokenFlow(t *testing.T) {
	f := newFixture(t)
	org := f.token(auth.TokenOrg, "o1", "")
	img, err := random.Image(1024, 2)
	if err != nil {
		t.Fatal(err)
	}
	ref := f.ref("p1/app:v1")
	if err := remote.Write(ref, img, basicAuth(org)); err != nil {
		t.Fatalf("push: %v", err)
	}
	got, err := remote.Image(ref, basicAuth(org))
	if err != nil {
		t.Fatalf("pull: %v", err)
	}
	want, _ := img.Digest()
	if d, _ := got.Digest(); d != want {
		t.Fatalf("pulled %s, pushed %s", d, want)
	}
	layers, _ := got.Layers()
	for _, l := range layers {
		rc, err := l.Compressed()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, rc); err != nil {
			t.Fatalf("layer: %v", err)
		}
		rc.Close()
	}
	// The push is indexed for ListImages.
	p := auth.Principal{Kind: auth.TokenOrg, OrgID: "o1"}
	imgs, _, err := f.reg.ListImages(context.Background(), p, "p1", 0, "")
	if err != nil || len(imgs) != 1 || imgs[0].Tag != "app:v1" || imgs[0].Digest != want.String() || imgs[0].Size <= 1024 {
		t.Errorf("ListImages = %+v, %v", imgs, err)
	}
}

// Who may do what, by token kind, from the attacker's side as well.
func TestRightsByTokenKind(t *testing.T) {
	f := newFixture(t)
	org := f.token(auth.TokenOrg, "o1", "")
	img, _ := random.Image(256, 1)
	if err := remote.Write(f.ref("p1/app:v1"), img, basicAuth(org)); err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(f.ref("q1/secret:v1"), img, basicAuth(f.token(auth.TokenOrg, "o2", ""))); err != nil {
		t.Fatal(err)
	}
	other, _ := random.Image(256, 1)
	cases := []struct {
		name       string
		secret     string
		pullP1     bool
		pushP1     bool
		pullP2Push bool // push to p2 (same org, another project)
	}{
		{"org", org, true, true, true},
		{"project p1", f.token(auth.TokenProject, "o1", "p1"), true, true, false},
		{"build in p1", f.token(auth.TokenBuild, "o1", "p1"), true, true, false},
		{"pull p1", f.token(auth.TokenPull, "o1", "p1"), true, false, false},
		{"project p2", f.token(auth.TokenProject, "o1", "p2"), false, false, true},
		{"org o2", f.token(auth.TokenOrg, "o2", ""), false, false, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := remote.Image(f.ref("p1/app:v1"), basicAuth(c.secret))
			if (err == nil) != c.pullP1 {
				t.Errorf("pull p1/app: %v, want allowed=%v", err, c.pullP1)
			}
			err = remote.Write(f.ref("p1/app:"+strings.ReplaceAll(c.name, " ", "-")), other, basicAuth(c.secret))
			if (err == nil) != c.pushP1 {
				t.Errorf("push p1/app: %v, want allowed=%v", err, c.pushP1)
			}
			err = remote.Write(f.ref("p2/app:x"), other, basicAuth(c.secret))
			if (err == nil) != c.pullP2Push {
				t.Errorf("push p2/app: %v, want allowed=%v", err, c.pullP2Push)
			}
			// Another organization's repository: never, and the answer for
			// an existing repository is the answer for a missing one.
			if c.name == "org o2" {
				return
			}
			r1 := f.do("GET", "/v2/q1/secret/manifests/v1", basic(c.secret), nil)
			r2 := f.do("GET", "/v2/q1/nothing/manifests/v1", basic(c.secret), nil)
			r3 := f.do("GET", "/v2/nosuchproject/x/manifests/v1", basic(c.secret), nil)
			c1, c2, c3 := ociCode(t, r1), ociCode(t, r2), ociCode(t, r3)
			if r1.StatusCode != 403 || c1 != "DENIED" || r2.StatusCode != r1.StatusCode || c2 != c1 || r3.StatusCode != r1.StatusCode || c3 != c1 {
				t.Errorf("other org: %d %s / missing repo %d %s / missing project %d %s", r1.StatusCode, c1, r2.StatusCode, c2, r3.StatusCode, c3)
			}
		})
	}
}

// Anonymous requests get the bearer challenge; the token endpoint refuses
// anonymous and bad credentials; a revoked token's registry tokens stop
// working at once.
func TestChallengeAndTokenEndpoint(t *testing.T) {
	f := newFixture(t, func(c *Config) { c.PublicURL = func() string { return "https://kiln.example.com/ignored/path" } })
	res := f.do("GET", "/v2/p1/app/manifests/v1", "", nil)
	ch := res.Header.Get("WWW-Authenticate")
	if res.StatusCode != 401 || ociCode(t, res) != "UNAUTHORIZED" ||
		ch != `Bearer realm="https://kiln.example.com/v2/token",service="kiln",scope="repository:p1/app:pull"` {
		t.Errorf("anonymous: %d %q", res.StatusCode, ch)
	}
	res = f.do("PUT", "/v2/p1/app/manifests/v1", "", []byte("{}"))
	if ch := res.Header.Get("WWW-Authenticate"); !strings.Contains(ch, `scope="repository:p1/app:pull,push"`) {
		t.Errorf("anonymous push challenge: %q", ch)
	}
	res.Body.Close()
	if res := f.do("GET", "/v2/", "", nil); res.StatusCode != 401 || res.Header.Get("Docker-Distribution-API-Version") != "registry/2.0" {
		t.Errorf("anonymous /v2/: %d %v", res.StatusCode, res.Header)
	}
	if res := f.do("GET", "/v2/token?service=kiln&scope=repository:p1/app:pull", "", nil); res.StatusCode != 401 {
		t.Errorf("anonymous token request: %d", res.StatusCode)
	}
	if res := f.do("GET", "/v2/token?service=kiln&scope=repository:p1/app:pull", basic("kiln_prj_nope"), nil); res.StatusCode != 401 {
		t.Errorf("bad token request: %d", res.StatusCode)
	}
	if res := f.do("GET", "/v2/", basic("kiln_prj_nope"), nil); res.StatusCode != 401 || !strings.Contains(res.Header.Get("WWW-Authenticate"), `error="invalid_token"`) {
		t.Errorf("bad basic credentials: %d %q", res.StatusCode, res.Header.Get("WWW-Authenticate"))
	}

	pull := f.token(auth.TokenPull, "o1", "p1")
	tok := f.fetchToken(pull, "repository:p1/app:pull,push", "repository:q1/x:pull", "repository:p2/x:*", "bogus", "repository:BAD:pull")
	c, err := f.reg.tokens.verify(tok, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if len(c.grants) != 1 || c.grants["p1/app"] != actPull {
		t.Errorf("pull token's grants = %v, want only pull on p1/app", c.grants)
	}
	if res := f.do("GET", "/v2/p1/app/tags/list", "Bearer "+tok, nil); res.StatusCode != 404 { // allowed; the repo is empty
		t.Errorf("with registry token: %d %s", res.StatusCode, ociCode(t, res))
	}
	if res := f.do("POST", "/v2/p1/app/blobs/uploads/", "Bearer "+tok, nil); res.StatusCode != 403 || ociCode(t, res) != "DENIED" {
		t.Errorf("pull token pushing: %d", res.StatusCode)
	}
	// Scope the principal has but the token lacks: challenge for it.
	org := f.token(auth.TokenOrg, "o1", "")
	orgTok := f.fetchToken(org, "repository:p1/app:pull")
	res = f.do("POST", "/v2/p1/app/blobs/uploads/", "Bearer "+orgTok, nil)
	if res.StatusCode != 401 || !strings.Contains(res.Header.Get("WWW-Authenticate"), `error="insufficient_scope"`) {
		t.Errorf("insufficient scope: %d %q", res.StatusCode, res.Header.Get("WWW-Authenticate"))
	}
	// Revoking the kiln token ends its registry tokens.
	toks, _ := f.st.ListTokens(context.Background(), "o1", "p1")
	for _, tk := range toks {
		if tk.Kind == auth.TokenPull {
			f.st.DeleteToken(context.Background(), tk.ID)
		}
	}
	if res := f.do("GET", "/v2/p1/app/tags/list", "Bearer "+tok, nil); res.StatusCode != 401 {
		t.Errorf("registry token of a deleted kiln token: %d", res.StatusCode)
	}
	// A token signed by another key, or tampered with, is refused.
	other := newFixture(t)
	forged := other.fetchToken(other.token(auth.TokenOrg, "o1", ""), "repository:p1/app:*")
	if res := f.do("GET", "/v2/p1/app/tags/list", "Bearer "+forged, nil); res.StatusCode != 401 {
		t.Errorf("token of another registry: %d", res.StatusCode)
	}
}

func (f *fixture) fetchToken(secret string, scopes ...string) string {
	f.t.Helper()
	q := "/v2/token?service=kiln"
	for _, s := range scopes {
		q += "&scope=" + s
	}
	res := f.do("GET", q, basic(secret), nil)
	defer res.Body.Close()
	var body struct {
		ExpiresIn int `json:"expires_in"`
	}
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode != 200 {
		f.t.Fatalf("token endpoint: %d %s", res.StatusCode, b)
	}
	json.Unmarshal(b, &body)
	var raw map[string]any
	json.Unmarshal(b, &raw)
	if raw["token"] != raw["access_token"] || body.ExpiresIn != int(tokenTTL/time.Second) {
		f.t.Fatalf("token response %s", b)
	}
	return raw["token"].(string)
}

// The token endpoint's OAuth2 form and hostile requests.
func TestTokenEndpointForms(t *testing.T) {
	var events []string
	f := newFixture(t, func(c *Config) {
		c.Audit = func(_ context.Context, event string, attrs ...any) { events = append(events, fmt.Sprint(event, attrs)) }
	})
	org := f.token(auth.TokenOrg, "o1", "")
	form := func(v url.Values) *http.Response {
		return f.do("POST", "/v2/token", "", []byte(v.Encode()), "Content-Type", "application/x-www-form-urlencoded")
	}
	res := form(url.Values{"grant_type": {"password"}, "username": {"anyone"}, "password": {org}, "service": {"kiln"}, "scope": {"repository:p1/app:pull,push"}})
	var body map[string]any
	json.NewDecoder(res.Body).Decode(&body)
	res.Body.Close()
	if res.StatusCode != 200 || body["access_token"] == nil {
		t.Fatalf("POST password grant: %d %v", res.StatusCode, body)
	}
	c, err := f.reg.tokens.verify(body["access_token"].(string), time.Now())
	if err != nil || c.grants["p1/app"] != actPull|actPush {
		t.Errorf("granted %v, %v", c.grants, err)
	}
	if res := form(url.Values{"grant_type": {"refresh_token"}, "refresh_token": {"x"}}); res.StatusCode != 400 {
		t.Errorf("refresh_token grant: %d", res.StatusCode)
	}
	if res := form(url.Values{"grant_type": {"password"}, "password": {"kiln_org_wrong"}}); res.StatusCode != 401 {
		t.Errorf("bad password: %d", res.StatusCode)
	}
	if res := f.do("POST", "/v2/token", "", bytes.Repeat([]byte("a"), 100<<10), "Content-Type", "application/x-www-form-urlencoded"); res.StatusCode != 400 {
		t.Errorf("oversized form: %d", res.StatusCode)
	}
	many := strings.Repeat("repository:p1/a:pull ", maxScopes+1)
	if res := f.do("GET", "/v2/token?scope="+url.QueryEscape(many), basic(org), nil); res.StatusCode != 400 {
		t.Errorf("too many scopes: %d", res.StatusCode)
	}
	if res := f.do("DELETE", "/v2/token", basic(org), nil); res.StatusCode != 405 {
		t.Errorf("DELETE /v2/token: %d", res.StatusCode)
	}
	if res := f.do("GET", "/v2/token", "Basic !!!notbase64", nil); res.StatusCode != 401 {
		t.Errorf("malformed Basic: %d", res.StatusCode)
	}
	// Audit: bad credentials and refusals, not the anonymous first request.
	events = nil
	f.do("GET", "/v2/", "", nil).Body.Close()
	f.do("GET", "/v2/p1/app/tags/list", "", nil).Body.Close()
	if len(events) != 0 {
		t.Errorf("anonymous requests audited: %v", events)
	}
	f.do("GET", "/v2/q1/app/tags/list", basic(org), nil).Body.Close()
	f.do("GET", "/v2/", basic("kiln_org_wrong"), nil).Body.Close()
	if len(events) != 2 || !strings.Contains(events[0], "PermissionDenied") || !strings.Contains(events[0], "q1/app") || !strings.Contains(events[1], "Unauthenticated") {
		t.Errorf("audit events = %v", events)
	}
	for _, e := range events {
		if strings.Contains(e, org) {
			t.Errorf("a token in the audit log: %s", e)
		}
	}
}

// The S3 option opens distribution's s3-aws driver (credentials from the
// environment); nothing is contacted until a request needs storage.
func TestS3StorageOption(t *testing.T) {
	t.Setenv("AWS_ACCESS_KEY_ID", "test")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "test")
	d, err := newDriver(context.Background(), t.TempDir(), &S3Config{Bucket: "kiln-images", Endpoint: "http://127.0.0.1:1"})
	if err != nil || d.Name() != "s3aws" {
		t.Fatalf("S3 driver: %v %v", d, err)
	}
	if _, err := newDriver(context.Background(), t.TempDir(), &S3Config{Bucket: "b", Region: "nowhere-1"}); err == nil {
		t.Errorf("an unknown AWS region was accepted")
	}
}
