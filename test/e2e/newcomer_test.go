package e2e

import (
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// What tripped a newcomer in their first hour (issue 14): the CLI's
// answers to a wrong --api-url, a missing argument, and its commands'
// output and flags.
func TestNewcomerCLIAnswers(t *testing.T) {
	t.Parallel()
	s := sharedServer(t)
	dir := t.TempDir()

	// A port where nothing listens: said so, naming the URL, with or
	// without a token.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + ln.Addr().String()
	ln.Close()
	for _, token := range []string{"", s.Token} {
		r := s.kiln(t, dir, []string{"KILN_API_URL=" + closed, "KILN_TOKEN=" + token}, "projects", "list")
		if want := "no kiln server answers at " + closed + " (connection refused)"; r.Err == nil || !strings.Contains(r.Stderr, want) {
			t.Errorf("projects list at a closed port (token %v): %v\n%s; want %q", token != "", r.Err, r.Stderr, want)
		}
	}
	// The live server, spelled localhost, without a token: the server
	// answers, so what is missing is the token (the admin-token fallback
	// is for the default port's server, tested in internal/client).
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(s.URL, "http://"))
	local := "http://localhost:" + port
	if r := s.kiln(t, dir, []string{"KILN_API_URL=" + local, "KILN_TOKEN="}, "projects", "list"); r.Err == nil || !strings.Contains(r.Stderr, "no token for the kiln server at "+local) {
		t.Errorf("projects list at %s without a token: %v\n%s", local, r.Err, r.Stderr)
	}
	if r := s.kiln(t, dir, []string{"KILN_API_URL=" + local}, "projects", "list"); r.Err != nil {
		t.Errorf("projects list at %s: %v\n%s", local, r.Err, r.Stderr)
	}

	// A missing argument says what and how, like buildx.
	r := s.kiln(t, dir, nil, "build")
	for _, want := range []string{`"kiln build" requires exactly 1 argument`, "See 'kiln build --help'.", "Usage:  kiln build [OPTIONS] PATH | URL | -", "Example:\n  kiln build "} {
		if r.Err == nil || !strings.Contains(r.Stderr, want) {
			t.Errorf("kiln build with no path: %v\n%s\nwant %q", r.Err, r.Stderr, want)
		}
	}

	// --help: no stray value name from backquotes.
	if h := s.mustKiln(t, dir, "build", "--help"); !strings.Contains(h.Stdout, "--token string") || strings.Contains(h.Stdout, "kiln login ") {
		t.Errorf("kiln build --help:\n%s", h.Stdout)
	}

	// projects create: the id alone on stdout, as README says.
	c := s.mustKiln(t, dir, "projects", "create", "newcomer-app")
	id := strings.TrimSpace(c.Stdout)
	if id == "" || strings.ContainsAny(id, " \t\n") || !strings.Contains(c.Stderr, id) {
		t.Fatalf("projects create: stdout %q stderr %q; want the id alone on stdout", c.Stdout, c.Stderr)
	}
	if g := s.mustKiln(t, dir, "projects", "get", id); !strings.Contains(g.Stdout, "newcomer-app") {
		t.Errorf("projects get %s:\n%s", id, g.Stdout)
	}

	// builds: --project on every subcommand; a build id of another
	// project is refused when --project names one.
	other := s.createProject(t, "newcomer-other")
	ctx := writeContext(t, map[string]string{"Dockerfile": baseStages + "FROM busybox\n"})
	b := s.mustKiln(t, ctx, "build", "--detach", "--project", id, "--progress", "quiet", ".")
	bid := strings.TrimSpace(b.Stdout)
	if l := s.mustKiln(t, dir, "builds", "list", "--project", id); !strings.Contains(l.Stdout, bid) {
		t.Errorf("builds list --project %s lacks %s:\n%s", id, bid, l.Stdout)
	}
	if l := s.mustKiln(t, dir, "builds", "list", "--project", other); strings.Contains(l.Stdout, bid) {
		t.Errorf("builds list --project %s shows %s of another project:\n%s", other, bid, l.Stdout)
	}
	s.mustKiln(t, dir, "builds", "logs", "-f", "--project", id, bid)
	if g := s.mustKiln(t, dir, "builds", "get", "--project", id, bid); !strings.Contains(g.Stdout, "succeeded") {
		t.Errorf("builds get --project:\n%s", g.Stdout)
	}
	if g := s.kiln(t, dir, nil, "builds", "get", "--project", other, bid); g.Err == nil || !strings.Contains(g.Stderr, "is in project "+id+", not in --project "+other) {
		t.Errorf("builds get --project of another project: %v\n%s", g.Err, g.Stderr)
	}
}

// A context holding an output dir with an absolute symlink (out/bin/[ ->
// /bin/busybox) builds with --detach as it does without: the link is kept
// as a link. Its log, replayed after the build, reads like buildx's plain
// progress: steps numbered in the order they started, no negative
// duration, the result once.
func TestNewcomerDetachSymlinkContextAndLog(t *testing.T) {
	t.Parallel()
	s := sharedServer(t)
	project := s.createProject(t, "newcomer-symlinks")
	dir := writeContext(t, map[string]string{
		"Dockerfile":      baseStages + "FROM busybox\nCOPY . /ctx\nRUN test \"$(readlink '/ctx/out/bin/[')\" = /bin/busybox && echo link-kept\n",
		"out/bin/busybox": "not really busybox",
	})
	if err := os.Symlink("/bin/busybox", filepath.Join(dir, "out", "bin", "[")); err != nil {
		t.Fatal(err)
	}
	b := s.mustKiln(t, dir, "build", "--detach", "--project", project, "--progress", "quiet", ".")
	id := strings.TrimSpace(b.Stdout)
	follow := s.kiln(t, dir, nil, "builds", "logs", "-f", id)
	if follow.Err != nil || !regexp.MustCompile(`(?m)^#\d+ link-kept$`).MatchString(follow.Stdout) {
		t.Fatalf("kiln builds logs -f %s: %v (want the RUN's output line link-kept)\nstdout:\n%s\nstderr:\n%s", id, follow.Err, follow.Stdout, follow.Stderr)
	}
	replay := s.mustKiln(t, dir, "builds", "logs", id)
	for name, out := range map[string]string{"followed": follow.Stdout, "replayed": replay.Stdout} {
		checkPlainLog(t, name, id, out)
	}
	// kiln build sends the same context: the COPY is a cache hit of the
	// detached build's.
	c := s.mustKiln(t, dir, "build", "--project", project, "--progress", "plain", ".")
	if !regexp.MustCompile(`(?m)^#(\d+) \[stage-1 1/2\] COPY \. /ctx\n#(\d+) CACHED$`).MatchString(c.Stderr) {
		t.Errorf("kiln build of the same context: COPY . /ctx not CACHED:\n%s", c.Stderr)
	}
}

// checkPlainLog checks build id's `kiln builds logs` output: the steps
// appear in the order they ran (this Dockerfile's steps run one after
// another), no DONE has a negative duration, and the build's result is
// said once.
func checkPlainLog(t *testing.T, name, id, out string) {
	t.Helper()
	order := []string{"[kiln] fetch and check the build context", "[kiln] start the project's builder",
		"[busybox 1/2] COPY busybox", "[busybox 2/2] RUN", "[stage-1 1/2] COPY . /ctx", "[stage-1 2/2] RUN", "exporting to image"}
	last := -1
	for _, step := range order {
		i := regexp.MustCompile(`(?m)^#\d+ ` + regexp.QuoteMeta(step)).FindStringIndex(out)
		if i == nil || i[0] < last {
			t.Errorf("%s log of %s: step %q missing or out of order (want %q in this order):\n%s", name, id, step, order, out)
			break
		}
		last = i[0]
	}
	if regexp.MustCompile(`DONE -`).MatchString(out) {
		t.Errorf("%s log of %s: a negative duration:\n%s", name, id, out)
	}
	if n := strings.Count(out, "succeeded"); n != 1 {
		t.Errorf("%s log of %s: %q said %d times, want once:\n%s", name, id, "succeeded", n, out)
	}
}

// kiln bake: --print names the project a target without project_id builds
// in (kiln.json here); --load on a target that writes local files warns,
// naming it, and the bake still builds it.
func TestNewcomerBakePrintAndLoad(t *testing.T) {
	t.Parallel()
	s := sharedServer(t)
	project := s.createProject(t, "newcomer-bake")
	dir := writeContext(t, map[string]string{
		"Dockerfile":      baseStages + "FROM busybox\nRUN echo baked > /baked.txt\n",
		"docker-bake.hcl": "target \"files\" {\n  output = [\"type=local,dest=out/files\"]\n}\n",
	})
	writeKilnJSON(t, dir, project)
	p := s.mustKiln(t, dir, "bake", "--print", "files")
	if !strings.Contains(p.Stdout, `"project_id": "`+project+`"`) {
		t.Errorf("bake --print lacks the kiln.json project %s:\n%s", project, p.Stdout)
	}
	b := s.mustKiln(t, dir, "bake", "--load", "--progress", "quiet", "files")
	if want := `kiln: warning: --load loads nothing for target "files" (output type=local)`; !strings.Contains(b.Stderr, want) {
		t.Errorf("bake --load of a local-output target: stderr lacks %q:\n%s", want, b.Stderr)
	}
	if got, err := os.ReadFile(filepath.Join(dir, "out", "files", "baked.txt")); err != nil || string(got) != "baked\n" {
		t.Errorf("out/files/baked.txt: %q, %v", got, err)
	}
}
