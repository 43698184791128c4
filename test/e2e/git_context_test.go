package e2e

// Git contexts: the builder fetches the source from a git server itself
// (BuildKit's git source), through `kiln build URL#ref:subdir` and through
// the source-build API with a git URL. The git server is Debian's
// git-http-backend (smart HTTP) behind net/http/cgi on loopback, started
// and stopped by the test; its private repository takes a token as Basic
// x-access-token:<token> (what BuildKit sends for GIT_AUTH_TOKEN) or a
// Bearer header (GIT_AUTH_HEADER).

import (
	"encoding/base64"
	"net"
	"net/http"
	"net/http/cgi"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	kilnv1 "github.com/kiln-dev/kiln/gen/kiln/v1"
)

const gitHTTPBackend = "/usr/lib/git-core/git-http-backend"

// The private repository's credentials.
const (
	gitToken  = "tok-3b1f9e-private"
	gitBearer = "bearer-77c2aa-private"
)

// gitServer serves every repository under root over smart HTTP on
// loopback; /private/ needs credentials.
type gitServer struct {
	root     string
	url      string // http://127.0.0.1:PORT
	requests atomic.Int64
}

func startGitServer(t *testing.T) *gitServer {
	t.Helper()
	if _, err := os.Stat(gitHTTPBackend); err != nil {
		t.Fatalf("git-http-backend (Debian's git package) is needed: %v", err)
	}
	gs := &gitServer{root: t.TempDir()}
	backend := &cgi.Handler{Path: gitHTTPBackend, Root: "/",
		Env: []string{"GIT_PROJECT_ROOT=" + gs.root, "GIT_HTTP_EXPORT_ALL=1"}}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gs.requests.Add(1)
		if strings.HasPrefix(r.URL.Path, "/private/") && !gitAuthorized(r.Header.Get("Authorization")) {
			w.Header().Set("WWW-Authenticate", `Basic realm="private"`)
			http.Error(w, "credentials required", http.StatusUnauthorized)
			return
		}
		backend.ServeHTTP(w, r)
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, WriteTimeout: 2 * time.Minute}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	gs.url = "http://" + ln.Addr().String()
	return gs
}

func gitAuthorized(h string) bool {
	scheme, cred, _ := strings.Cut(h, " ")
	switch strings.ToLower(scheme) {
	case "basic":
		dt, err := base64.StdEncoding.DecodeString(cred)
		return err == nil && string(dt) == "x-access-token:"+gitToken
	case "bearer":
		return cred == gitBearer
	}
	return false
}

// gitRepo makes a bare repository name under the server's root from a
// work tree with two commits: the first tagged v1 (annotated), main at the
// second. It returns the first commit's SHA and main's.
func (gs *gitServer) gitRepo(t *testing.T, name string) (v1, head string) {
	t.Helper()
	work := t.TempDir()
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	write := func(rel, body string, mode os.FileMode) {
		p := filepath.Join(work, rel)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(body), mode); err != nil {
			t.Fatal(err)
		}
	}
	git := func(dir string, args ...string) string {
		t.Helper()
		cmd := exec.Command("git", args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@example.com", "GIT_COMMITTER_NAME=t",
			"GIT_COMMITTER_EMAIL=t@example.com", "GIT_CONFIG_NOSYSTEM=1", "HOME="+dir)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("git %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return strings.TrimSpace(string(out))
	}
	// The root's Dockerfile reports whether .git was kept; app/'s reports
	// the version it was built from.
	write("busybox", string(bb), 0o755)
	write("app/busybox", string(bb), 0o755)
	write("Dockerfile", baseStages+`FROM busybox AS probe
COPY . /src
RUN if test -d /src/.git; then echo git-dir-kept; else echo no-git-dir; fi > /out.txt
FROM scratch
COPY --from=probe /out.txt /
`, 0o644)
	write("app/Dockerfile", baseStages+`FROM busybox AS probe
COPY . /src
RUN cat /src/version.txt > /out.txt && test ! -e /src/app
FROM scratch
COPY --from=probe /out.txt /
`, 0o644)
	write("app/version.txt", "version one\n", 0o644)
	git(work, "init", "-q", "-b", "main")
	git(work, "add", "-A")
	git(work, "commit", "-q", "-m", "one")
	git(work, "tag", "-a", "v1", "-m", "release one")
	v1 = git(work, "rev-parse", "HEAD")
	write("app/version.txt", "version two\n", 0o644)
	git(work, "commit", "-q", "-am", "two")
	head = git(work, "rev-parse", "HEAD")
	bare := filepath.Join(gs.root, name)
	os.MkdirAll(filepath.Dir(bare), 0o755)
	git(work, "clone", "-q", "--bare", work, bare)
	return v1, head
}

func readOut(t *testing.T, dir string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "out.txt"))
	if err != nil {
		t.Fatalf("build output: %v", err)
	}
	return strings.TrimSpace(string(b))
}

// TestGitContextBuild runs on a server started with --git-private-hosts:
// the test's git server is on loopback, which the builders' fetch proxy
// refuses by default (TestGitContextPrivateHostRefused).
func TestGitContextBuild(t *testing.T) {
	s := startServer(t, "--git-private-hosts")
	gs := startGitServer(t)
	v1, head := gs.gitRepo(t, "org/public.git")
	gs.gitRepo(t, "private/app.git")
	project := s.createProject(t, "git-context")
	public := gs.url + "/org/public.git"
	private := gs.url + "/private/app.git"

	build := func(t *testing.T, env []string, extra ...string) (result, string) {
		t.Helper()
		out := t.TempDir()
		args := append([]string{"build", "--project", project, "--progress", "plain", "-o", "type=local,dest=" + out}, extra...)
		return s.kiln(t, t.TempDir(), env, args...), out
	}
	ok := func(t *testing.T, env []string, extra ...string) (result, string) {
		t.Helper()
		r, out := build(t, env, extra...)
		if r.Err != nil {
			t.Fatalf("kiln build %s: %v\n%s", strings.Join(extra, " "), r.Err, tail(r.Stderr, 6000))
		}
		return r, out
	}

	t.Run("branch tag and commit with a subdir", func(t *testing.T) {
		for _, c := range []struct{ ref, want, commit string }{
			{"main", "version two", head},
			{"v1", "version one", v1},
			{v1, "version one", v1},
		} {
			r, out := ok(t, nil, public+"#"+c.ref+":app")
			if got := readOut(t, out); got != c.want {
				t.Errorf("#%s:app built %q; want %q", c.ref, got, c.want)
			}
			if !strings.Contains(r.Stderr, "built git commit "+c.commit) {
				t.Errorf("#%s:app: stderr does not name commit %s:\n%s", c.ref, c.commit, tail(r.Stderr, 2000))
			}
			// The commit is recorded on the build, as for source builds.
			m := regexp.MustCompile(`kiln: build (\S+) in project`).FindStringSubmatch(r.Stderr)
			if m == nil {
				t.Fatalf("no build id in:\n%s", r.Stderr)
			}
			got := s.mustKiln(t, t.TempDir(), "builds", "get", m[1])
			if !strings.Contains(got.Stdout, "git commit:") || !strings.Contains(got.Stdout, c.commit) {
				t.Errorf("kiln builds get %s does not show commit %s:\n%s", m[1], c.commit, got.Stdout)
			}
		}
	})

	t.Run("default branch and BUILDKIT_CONTEXT_KEEP_GIT_DIR", func(t *testing.T) {
		_, out := ok(t, nil, public)
		if got := readOut(t, out); got != "no-git-dir" {
			t.Errorf("without BUILDKIT_CONTEXT_KEEP_GIT_DIR the context holds %q; want no .git", got)
		}
		_, out = ok(t, nil, "--build-arg", "BUILDKIT_CONTEXT_KEEP_GIT_DIR=1", public+"#main")
		if got := readOut(t, out); got != "git-dir-kept" {
			t.Errorf("with BUILDKIT_CONTEXT_KEEP_GIT_DIR=1 the context holds %q; want .git", got)
		}
	})

	t.Run("bake", func(t *testing.T) {
		out1, out2 := t.TempDir(), t.TempDir()
		dir := writeContext(t, map[string]string{"docker-bake.hcl": `
group "default" { targets = ["main", "v1"] }
target "main" {
  context = "` + public + `#main:app"
  output = ["type=local,dest=` + out1 + `"]
}
target "v1" {
  context = "` + public + `#v1:app"
  output = ["type=local,dest=` + out2 + `"]
}
`})
		r := s.kiln(t, dir, nil, "bake", "--project", project, "--progress", "plain")
		if r.Err != nil {
			t.Fatalf("kiln bake: %v\n%s", r.Err, tail(r.Stderr, 4000))
		}
		if a, b := readOut(t, out1), readOut(t, out2); a != "version two" || b != "version one" {
			t.Errorf("bake built %q and %q; want version two (main) and version one (v1)", a, b)
		}
	})

	t.Run("private repository", func(t *testing.T) {
		r, out := ok(t, []string{"GIT_TOKEN=" + gitToken}, "--secret", "id=GIT_AUTH_TOKEN,env=GIT_TOKEN", private+"#main:app")
		if got := readOut(t, out); got != "version two" {
			t.Errorf("private #main:app built %q", got)
		}
		if strings.Contains(r.Stderr, gitToken) {
			t.Errorf("the token is in kiln's output:\n%s", r.Stderr)
		}
		host := strings.TrimPrefix(gs.url, "http://")
		_, out = ok(t, []string{"GIT_HDR=Bearer " + gitBearer}, "--secret", "id=GIT_AUTH_HEADER."+host+",env=GIT_HDR", private+"#v1:app")
		if got := readOut(t, out); got != "version one" {
			t.Errorf("private #v1:app with a bearer header built %q", got)
		}

		r, _ = build(t, nil, private+"#main:app")
		t.Logf("no credentials: %s", lastLine(r.Stderr))
		if r.Err == nil || !strings.Contains(r.Stderr, "needs credentials") || !strings.Contains(r.Stderr, "GIT_AUTH_TOKEN") {
			t.Errorf("no credentials: err %v; want an error saying credentials are needed and how:\n%s", r.Err, tail(r.Stderr, 2000))
		}
		r, _ = build(t, []string{"GIT_TOKEN=wrong-token"}, "--secret", "id=GIT_AUTH_TOKEN,env=GIT_TOKEN", private+"#main:app")
		t.Logf("wrong token: %s", lastLine(r.Stderr))
		if r.Err == nil || !strings.Contains(r.Stderr, "refused the credentials") {
			t.Errorf("wrong token: err %v; want an error saying the credentials were refused:\n%s", r.Err, tail(r.Stderr, 2000))
		}
		if strings.Contains(r.Stderr, "wrong-token") {
			t.Errorf("the token is in kiln's output:\n%s", r.Stderr)
		}
	})

	t.Run("errors", func(t *testing.T) {
		r, _ := build(t, nil, public+"#no-such-branch:app")
		t.Logf("wrong ref: %s", lastLine(r.Stderr))
		if r.Err == nil || !strings.Contains(r.Stderr, `ref "no-such-branch" not found`) {
			t.Errorf("wrong ref: err %v; want an error naming the ref:\n%s", r.Err, tail(r.Stderr, 2000))
		}
		for _, c := range []struct{ url, want string }{
			{"file:///etc/repo.git", "not supported"},
			{"ftp://host/repo.git", "not supported"},
			{"https://user:pw@example.com/r.git", "credentials do not belong in the URL"},
			{"https://example.com/archive.tar.gz", "ends in .git"},
			{public + "#--upload-pack=touch:app", `cannot start with "-"`},
			{public + "#main:../..", "leaves the repository"},
		} {
			before := gs.requests.Load()
			r, _ := build(t, nil, c.url)
			t.Logf("%s: %s", c.url, lastLine(r.Stderr))
			if r.Err == nil || !strings.Contains(r.Stderr, c.want) {
				t.Errorf("%s: err %v; want %q:\n%s", c.url, r.Err, c.want, tail(r.Stderr, 1500))
			}
			if gs.requests.Load() != before {
				t.Errorf("%s reached the git server; it must be refused before any fetch", c.url)
			}
		}
	})
}

// TestGitContextSourceBuild runs on a server started with
// --git-private-hosts, as TestGitContextBuild does.
func TestGitContextSourceBuild(t *testing.T) {
	s := startServer(t, "--git-private-hosts")
	gs := startGitServer(t)
	v1, head := gs.gitRepo(t, "org/public.git")
	_, privateHead := gs.gitRepo(t, "private/app.git") // its own commits: another SHA when the clock ticked
	public := gs.url + "/org/public.git"
	private := gs.url + "/private/app.git"

	create := func(t *testing.T, req *kilnv1.CreateBuildRequest) *kilnv1.Build {
		t.Helper()
		req.Project = customer("git-co")
		res, err := s.sourceAPI().CreateBuild(t.Context(), bearer(req, s.Token))
		if err != nil {
			t.Fatalf("CreateBuild %s: %v", req.GitUrl, err)
		}
		return s.watch(t, s.Token, res.Msg.BuildId, 4*time.Minute).last
	}

	var lastID string
	for _, c := range []struct{ url, commit string }{
		{public + "#main:app", head},
		{public + "#v1:app", v1},
		{public + "#" + v1 + ":app", v1},
	} {
		b := create(t, &kilnv1.CreateBuildRequest{GitUrl: c.url})
		lastID = b.BuildId
		if b.Status != kilnv1.BuildStatus_BUILD_STATUS_SUCCEEDED {
			t.Fatalf("%s: build ended %v: %s", c.url, b.Status, b.Error)
		}
		if b.GitCommit != c.commit || b.GitUrl != c.url || b.ContextKey != "" {
			t.Errorf("%s: build records commit %q url %q context %q; want commit %s", c.url, b.GitCommit, b.GitUrl, b.ContextKey, c.commit)
		}
		if got := s.getSourceBuild(t, s.Token, b.BuildId); got.GitCommit != c.commit {
			t.Errorf("GetBuild %s: commit %q; want %s", b.BuildId, got.GitCommit, c.commit)
		}
		r := s.mustKiln(t, t.TempDir(), "builds", "get", b.BuildId)
		if !strings.Contains(r.Stdout, c.commit) {
			t.Errorf("kiln builds get %s does not show commit %s:\n%s", b.BuildId, c.commit, r.Stdout)
		}
	}

	// kiln build --detach URL queues the same source build, uploading nothing.
	r := s.mustKiln(t, t.TempDir(), "build", "--detach", "--customer", "git-co", public+"#v1:app")
	if id := strings.TrimSpace(r.Stdout); id == "" {
		t.Errorf("kiln build --detach printed no build id:\n%s", r.Stderr)
	} else if b := s.watch(t, s.Token, id, 4*time.Minute).last; b.Status != kilnv1.BuildStatus_BUILD_STATUS_SUCCEEDED || b.GitCommit != v1 || b.GitUrl != public+"#v1:app" {
		t.Errorf("kiln build --detach %s#v1:app: %v %q commit %q url %q; want commit %s", public, b.Status, b.Error, b.GitCommit, b.GitUrl, v1)
	}

	// Only a client build's own build token records a commit.
	_, err := s.sourceAPI().RecordGitCommit(t.Context(), bearer(&kilnv1.RecordGitCommitRequest{BuildId: lastID, GitCommit: strings.Repeat("a", 40)}, s.Token))
	if err == nil || !strings.Contains(err.Error(), "own build token") {
		t.Errorf("RecordGitCommit with the admin token: %v; want it refused", err)
	}

	b := create(t, &kilnv1.CreateBuildRequest{GitUrl: private + "#main:app", Secrets: map[string]string{"GIT_AUTH_TOKEN": gitToken}})
	if b.Status != kilnv1.BuildStatus_BUILD_STATUS_SUCCEEDED || b.GitCommit != privateHead {
		t.Fatalf("private build: %v %q commit %q; want %s", b.Status, b.Error, b.GitCommit, privateHead)
	}
	b = create(t, &kilnv1.CreateBuildRequest{GitUrl: private + "#main:app", Secrets: map[string]string{"GIT_AUTH_TOKEN": "wrong-src-token"}})
	if b.Status != kilnv1.BuildStatus_BUILD_STATUS_FAILED || !strings.Contains(b.Error, "refused the credentials") || strings.Contains(b.Error, "wrong-src-token") {
		t.Errorf("private build with a wrong token: %v %q; want failed, credentials refused, the token not shown", b.Status, b.Error)
	}
	b = create(t, &kilnv1.CreateBuildRequest{GitUrl: private + "#main:app"})
	if b.Status != kilnv1.BuildStatus_BUILD_STATUS_FAILED || !strings.Contains(b.Error, "needs credentials") || b.GitCommit != "" {
		t.Errorf("private build without credentials: %v %q commit %q; want failed, needing credentials", b.Status, b.Error, b.GitCommit)
	}
	t.Logf("no credentials (source build): %s", b.Error)
	b = create(t, &kilnv1.CreateBuildRequest{GitUrl: public + "#nope:app"})
	t.Logf("wrong ref (source build): %s", b.Error)
	if b.Status != kilnv1.BuildStatus_BUILD_STATUS_FAILED || !strings.Contains(b.Error, `ref "nope" not found`) {
		t.Errorf("wrong ref: %v %q; want failed naming the ref", b.Status, b.Error)
	}

	for _, c := range []struct {
		req  *kilnv1.CreateBuildRequest
		want string
	}{
		{&kilnv1.CreateBuildRequest{GitUrl: "file:///srv/repo.git"}, "not supported"},
		{&kilnv1.CreateBuildRequest{GitUrl: "/srv/repo.git"}, "not a git URL"},
		{&kilnv1.CreateBuildRequest{GitUrl: "-uhttps://x/r.git"}, `cannot start with "-"`},
		{&kilnv1.CreateBuildRequest{GitUrl: "https://x/" + strings.Repeat("a", 3000) + ".git"}, "at most"},
		{&kilnv1.CreateBuildRequest{GitUrl: public, ContextKey: "ctx_x"}, "not both"},
	} {
		c.req.Project = customer("git-co")
		_, err := s.sourceAPI().CreateBuild(t.Context(), bearer(c.req, s.Token))
		t.Logf("CreateBuild %.60q: %v", c.req.GitUrl, err)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("CreateBuild %.60q: %v; want an error with %q", c.req.GitUrl, err, c.want)
		}
	}
}

// lastLine is the last non-empty line of s (the CLI's error).
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// A default server keeps git fetches to the builders' network policy.
// Source builds are refused at CreateBuild, before anything is fetched,
// when the host resolves to a private address; the project's egress
// allow-list opens a private range, never loopback. And whatever asks
// buildkitd to fetch — `kiln build URL`, a Dockerfile's `ADD <git URL>`,
// a name that resolves to loopback — goes through the builder's fetch
// proxy, which refuses the address it would connect to.
func TestGitContextPrivateHostRefused(t *testing.T) {
	s := sharedServer(t)
	gs := startGitServer(t)
	gs.gitRepo(t, "org/public.git")
	port := gs.url[strings.LastIndex(gs.url, ":")+1:]
	for _, u := range []string{gs.url + "/org/public.git#main", "http://169.254.169.254/latest.git", "http://10.1.2.3/r.git", "http://localhost:1/r.git"} {
		_, err := s.sourceAPI().CreateBuild(t.Context(), bearer(&kilnv1.CreateBuildRequest{Project: customer("git-private"), GitUrl: u}, s.Token))
		t.Logf("CreateBuild %s: %v", u, err)
		if err == nil || !strings.Contains(err.Error(), "private address builds may not reach") {
			t.Errorf("CreateBuild %s: %v; want it refused as a private address", u, err)
		}
	}

	project := s.createProject(t, "git-private-client")
	for _, u := range []string{gs.url + "/org/public.git#main", "http://localhost:" + port + "/org/public.git#main"} {
		r := s.kiln(t, t.TempDir(), nil, "build", "--project", project, "--progress", "plain", "-o", "type=local,dest="+t.TempDir(), u)
		t.Logf("kiln build %s: %s", u, lastLine(r.Stderr))
		if r.Err == nil || !strings.Contains(r.Stderr, "the builder may not reach") || !strings.Contains(r.Stderr, "--egress-allow") {
			t.Errorf("kiln build %s: err %v; want the fetch refused by the builder's network policy:\n%s", u, r.Err, tail(r.Stderr, 2000))
		}
	}
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	dir := writeContext(t, map[string]string{
		"busybox":    string(bb),
		"Dockerfile": baseStages + "FROM busybox\nADD " + gs.url + "/org/public.git#main /src\nRUN cat /src/app/version.txt\n",
	})
	r := s.kiln(t, dir, nil, "build", "--project", project, "--progress", "plain", ".")
	t.Logf("ADD <git URL>: %s", lastLine(r.Stderr))
	if r.Err == nil || !strings.Contains(r.Stderr, "421") {
		t.Errorf("ADD %s/org/public.git: err %v; want the fetch refused (421 from the fetch proxy):\n%s", gs.url, r.Err, tail(r.Stderr, 2000))
	}
	if n := gs.requests.Load(); n != 0 {
		t.Errorf("the git server saw %d requests; a refused build must fetch nothing", n)
	}
}
