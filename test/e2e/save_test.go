package e2e

import (
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	cliv1extra "github.com/kiln-dev/kiln/gen/depot/cli/v1"
)

// Saved builds: `kiln build --save` pushes to kiln's own registry,
// `kiln pull` brings a saved build into Docker, `kiln push` copies it to
// another registry, and GetPullInfo hands out read-only credentials.

// registryHost is kiln's registry as clients see it: the server's address.
func (s *server) registryHost() string { return strings.TrimPrefix(s.URL, "http://") }

// requireRegistry fails the test unless `kiln serve` answers the OCI
// registry API at /v2/ (401 to an anonymous client, or 200).
func (s *server) requireRegistry(t *testing.T) {
	t.Helper()
	res, err := http.Get(s.URL + "/v2/")
	if err != nil {
		t.Fatalf("GET /v2/: %v", err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusUnauthorized && res.StatusCode != http.StatusOK {
		t.Fatalf("kiln serve does not serve its registry at /v2/ (HTTP %d)", res.StatusCode)
	}
}

var buildIDRe = regexp.MustCompile(`kiln: build (\S+) in project`)

func buildIDOf(t *testing.T, r result) string {
	t.Helper()
	m := buildIDRe.FindStringSubmatch(r.Stderr)
	if m == nil {
		t.Fatalf("no build id in the output:\n%s", tail(r.Stderr, 3000))
	}
	return m[1]
}

// pullInfo calls depot.cli.v1.BuildService/GetPullInfo as the depot CLI does.
func (s *server) pullInfo(t *testing.T, buildID, token string) (*cliv1extra.GetPullInfoResponse, error) {
	t.Helper()
	c := connect.NewClient[cliv1extra.GetPullInfoRequest, cliv1extra.GetPullInfoResponse](http.DefaultClient, s.URL+"/depot.cli.v1.BuildService/GetPullInfo")
	res, err := c.CallUnary(t.Context(), bearer(&cliv1extra.GetPullInfoRequest{BuildId: buildID}, token))
	if err != nil {
		return nil, err
	}
	return res.Msg, nil
}

// registryStatus is the HTTP status of a registry error (0 if none).
func registryStatus(err error) int {
	var te *transport.Error
	if errors.As(err, &te) {
		return te.StatusCode
	}
	return 0
}

// pushRandom pushes a small random image to ref as user x-token with token.
func pushRandom(t *testing.T, ref, token string) error {
	t.Helper()
	img, err := random.Image(128, 1)
	if err != nil {
		t.Fatal(err)
	}
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	return remote.Write(r, img, remote.WithContext(t.Context()), remote.WithAuth(&authn.Basic{Username: "x-token", Password: token}))
}

const saveDockerfile = baseStages + `FROM busybox
RUN echo saved-by-kiln > /file
`

// A developer saves a build, pulls it into Docker by build id and by
// --save-tag, and runs it; the pull credentials read but never write.
func TestSaveAndPull(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	s.requireRegistry(t)
	d := startDockerd(t)
	proj := s.createProject(t, "saved")
	dir := writeContext(t, map[string]string{"Dockerfile": saveDockerfile})
	host := s.registryHost()
	docker := []string{"DOCKER_HOST=" + d.Host}

	dockerConfig := t.TempDir()
	r := s.mustKilnEnv(t, dir, []string{"DOCKER_CONFIG=" + dockerConfig}, "build", "--project", proj, "--save", "--save-tag", "v1", "--progress", "plain", ".")
	id := buildIDOf(t, r)
	// The lent build token stayed in memory: nothing in the Docker config
	// directory holds it (BuildKit's .token_seed holds a random seed per
	// host, no credentials).
	filepath.WalkDir(dockerConfig, func(p string, e os.DirEntry, err error) error {
		if err == nil && !e.IsDir() {
			if b, _ := os.ReadFile(p); strings.Contains(string(b), "kiln_bld_") || (e.Name() == "config.json" && strings.Contains(string(b), host)) {
				t.Errorf("%s holds the save credentials:\n%s", p, b)
			}
		}
		return nil
	})
	ref := host + "/" + proj + ":" + id
	for _, want := range []string{
		"saved to kiln's registry as " + ref + ", " + host + "/" + proj + ":v1",
		"kiln pull " + id,
		"pushing layers", // BuildKit's push, in the progress
	} {
		if !strings.Contains(r.Stderr, want) {
			t.Errorf("kiln build --save output lacks %q:\n%s", want, tail(r.Stderr, 4000))
		}
	}
	// The builders reach kiln's registry over TLS with kiln's CA, never
	// plain HTTP, with no flag.
	confs, _ := filepath.Glob(filepath.Join(s.Data, "builders", "*", "*", "buildkitd.toml"))
	for _, c := range confs {
		want := "[registry.\"" + host + "\"]\n  http = false\n  ca = [\"" + filepath.Join(s.Data, "pki", "ca.crt") + "\"]"
		if b, _ := os.ReadFile(c); !strings.Contains(string(b), want) {
			t.Errorf("%s does not make builders reach kiln's registry %s over TLS with kiln's CA:\n%s", c, host, b)
		}
	}

	t.Run("pull by build id and run", func(t *testing.T) {
		r := s.kiln(t, dir, docker, "pull", id, "-t", "saved:1")
		if r.Err != nil {
			t.Fatalf("kiln pull: %v\n%s", r.Err, r.Stderr)
		}
		if !strings.HasPrefix(strings.TrimSpace(r.Stdout), "sha256:") || !strings.Contains(r.Stderr, "pulled build "+id+" into Docker as saved:1") {
			t.Errorf("kiln pull output:\nstdout: %s\nstderr: %s", r.Stdout, r.Stderr)
		}
		out, err := d.docker(t, "run", "--rm", "--network", "none", "saved:1", "cat", "/file")
		if err != nil || strings.TrimSpace(out) != "saved-by-kiln" {
			t.Errorf("docker run saved:1 cat /file = %q, %v", out, err)
		}
		// Only the user's name is left, not the registry reference.
		if out, err := d.docker(t, "image", "inspect", ref); err == nil {
			t.Errorf("the pull reference %s is still tagged: %s", ref, out)
		}
	})

	t.Run("pull by tag", func(t *testing.T) {
		s.mustKilnEnv(t, dir, docker, "pull", proj+":v1", "-t", "saved:2")
		s.mustKilnEnv(t, dir, docker, "pull", "--project", proj, "v1", "-t", "saved:3")
		for _, n := range []string{"saved:2", "saved:3"} {
			out, err := d.docker(t, "run", "--rm", "--network", "none", n, "cat", "/file")
			if err != nil || strings.TrimSpace(out) != "saved-by-kiln" {
				t.Errorf("docker run %s = %q, %v", n, out, err)
			}
		}
		// No -t: the image keeps its registry reference.
		s.mustKilnEnv(t, dir, docker, "pull", proj+":v1")
		if out, err := d.docker(t, "image", "inspect", host+"/"+proj+":v1"); err != nil {
			t.Errorf("pull without -t left no image named %s/%s:v1: %v %s", host, proj, err, out)
		}
	})

	t.Run("GetPullInfo credentials pull but cannot push", func(t *testing.T) {
		info, err := s.pullInfo(t, id, s.Token)
		if err != nil {
			t.Fatal(err)
		}
		if info.Reference != ref || info.Username != "x-token" || !strings.HasPrefix(info.Password, "kiln_pul_") {
			t.Fatalf("GetPullInfo = %s %s %.9s…", info.Reference, info.Username, info.Password)
		}
		if len(info.Options) != 1 || !info.Options[0].Save || info.SaveForLoad {
			t.Errorf("GetPullInfo options = %v, save_for_load = %v", info.Options, info.SaveForLoad)
		}
		auth := &authn.Basic{Username: info.Username, Password: info.Password}
		desc, err := remote.Get(mpRef(t, info.Reference), remote.WithAuth(auth))
		if err != nil {
			t.Fatalf("pull with GetPullInfo's credentials: %v", err)
		}
		if _, err := remote.Image(mpRef(t, info.Reference+"@"+desc.Digest.String()), remote.WithAuth(auth)); err != nil && !desc.MediaType.IsIndex() {
			t.Errorf("read image: %v", err)
		}
		for _, target := range []string{host + "/" + proj + ":" + id, host + "/" + proj + ":hijack", host + "/" + proj + "/other:x"} {
			err := pushRandom(t, target, info.Password)
			if st := registryStatus(err); st != http.StatusUnauthorized && st != http.StatusForbidden {
				t.Errorf("push to %s with a pull token: %v (HTTP %d), want 401 or 403", target, err, st)
			}
		}
		// The build's own token may ask too; another project's build is hidden.
		other := s.createProject(t, "saved-other")
		otherBuild, otherTok := s.createBuild(t, other, s.Token)
		if _, err := s.pullInfo(t, id, otherTok); connect.CodeOf(err) != connect.CodeNotFound {
			t.Errorf("GetPullInfo of A's build with B's build token: %v", err)
		}
		if _, err := s.pullInfo(t, otherBuild, otherTok); err != nil {
			t.Errorf("GetPullInfo with the build's own token: %v", err)
		}
		if _, err := s.pullInfo(t, "nosuchbuild1", s.Token); connect.CodeOf(err) != connect.CodeNotFound {
			t.Errorf("GetPullInfo of an unknown build: %v", err)
		}
	})

	t.Run("bad input", func(t *testing.T) {
		empty := t.TempDir() // no kiln.json: a bare name can only be a build id
		cases := []struct {
			args []string
			want string
		}{
			{[]string{"pull", "nosuchbuild1"}, "no build nosuchbuild1"},
			{[]string{"pull", id, "-t", "Bad:Name"}, "-t \"Bad:Name\""},
			{[]string{"pull", id, "--platform", "linux/amd64,linux/arm64"}, "--platform"},
			{[]string{"pull", "a:b:c"}, "want a build id, PROJECT:TAG or :TAG"},
			{[]string{"pull", host + "/" + proj + ":v1"}, "not an image reference"},
			{[]string{"pull", proj + ":nosuchtag"}, "no image is saved as " + host + "/" + proj + ":nosuchtag"},
			{[]string{"push", id}, "give at least one destination"},
			{[]string{"push", id, "-t", "not a reference"}, "-t \"not a reference\""},
			{[]string{"push", "nosuchbuild1", "-t", "127.0.0.1:5000/app:1"}, "no build nosuchbuild1"},
			{[]string{"push", id, "-t", "127.0.0.1:1/app:1"}, "127.0.0.1:1/app:1"},
			{[]string{"build", "--project", proj, "--save-tag", "bad tag!", dir}, "--save-tag \"bad tag!\""},
			{[]string{"build", "--project", proj, "--save", "--call=check", dir}, "--save"},
		}
		for _, c := range cases {
			start := time.Now()
			r := s.kiln(t, empty, docker, c.args...)
			if r.Err == nil || !strings.Contains(r.Stderr, c.want) {
				t.Errorf("kiln %s: err=%v, want an error containing %q\n%s", strings.Join(c.args, " "), r.Err, c.want, r.Stderr)
			}
			if time.Since(start) > 60*time.Second {
				t.Errorf("kiln %s took %s to fail", strings.Join(c.args, " "), time.Since(start))
			}
		}
		// A build that was not saved has nothing to pull.
		plain := s.mustKiln(t, dir, "build", "--project", proj, "--progress", "plain", ".")
		pid := buildIDOf(t, plain)
		r := s.kiln(t, empty, docker, "pull", pid)
		if r.Err == nil || !strings.Contains(r.Stderr, "build "+pid+" was not saved (build with --save)") {
			t.Errorf("pull of an unsaved build: %v\n%s", r.Err, r.Stderr)
		}
		// An unreachable Docker engine is named.
		r = s.kiln(t, empty, []string{"DOCKER_HOST=unix:///nonexistent/docker.sock"}, "pull", id, "-t", "x:1")
		if r.Err == nil || !strings.Contains(r.Stderr, "cannot reach the Docker engine") {
			t.Errorf("pull with no Docker engine: %v\n%s", r.Err, r.Stderr)
		}
	})
}

// mustKilnEnv is mustKiln with extra environment.
func (s *server) mustKilnEnv(t *testing.T, dir string, env []string, args ...string) result {
	t.Helper()
	r := s.kiln(t, dir, env, args...)
	if r.Err != nil {
		t.Fatalf("kiln %s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), r.Err, r.Stdout, tail(r.Stderr, 8000))
	}
	return r
}

// A build token lent for --save pushes into its own project only.
func TestSaveTokenScope(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	s.requireRegistry(t)
	a := s.createProject(t, "scope-a")
	b := s.createProject(t, "scope-b")
	host := s.registryHost()
	_, tokA := s.createBuild(t, a, s.Token)
	if err := pushRandom(t, host+"/"+a+":mine", tokA); err != nil {
		t.Errorf("A's build token pushing into A: %v", err)
	}
	for _, target := range []string{host + "/" + b + ":x", host + "/" + b + "/sub:x"} {
		err := pushRandom(t, target, tokA)
		if st := registryStatus(err); st != http.StatusUnauthorized && st != http.StatusForbidden {
			t.Errorf("A's build token pushing to %s: %v (HTTP %d), want 401 or 403", target, err, st)
		}
	}
}

// A two-platform saved build is copied to another registry with its
// index digest, both platforms and their attestation manifests.
func TestSaveMultiPlatformPush(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	s.requireRegistry(t)
	proj := s.createProject(t, "saved-multi")
	ctxDir := writeMultiContext(t)
	r := s.mustKiln(t, ctxDir, "build", "--project", proj, "--platform", twoPlatforms, "--save", "--progress", "plain", ".")
	id := buildIDOf(t, r)

	info, err := s.pullInfo(t, id, s.Token)
	if err != nil {
		t.Fatal(err)
	}
	auth := &authn.Basic{Username: info.Username, Password: info.Password}
	src, err := remote.Get(mpRef(t, info.Reference), remote.WithAuth(auth))
	if err != nil {
		t.Fatalf("read the saved index: %v", err)
	}

	reg := startRegistry(t)
	dst := reg + "/team/app:1"
	pushed := s.mustKiln(t, t.TempDir(), "push", id, "-t", dst, "-t", reg+"/team/app:also")
	if got := strings.TrimSpace(pushed.Stdout); got != src.Digest.String() {
		t.Errorf("kiln push printed %q, want the saved digest %s", got, src.Digest)
	}
	if !strings.Contains(pushed.Stderr, "pushed "+dst) {
		t.Errorf("kiln push progress:\n%s", pushed.Stderr)
	}
	for _, ref := range []string{dst, reg + "/team/app:also"} {
		if d := mpRemoteDigest(t, ref); d != src.Digest.String() {
			t.Errorf("%s digest %s, want %s", ref, d, src.Digest)
		}
	}
	idx := mpRemoteIndex(t, dst)
	var plats []string
	attestations := 0
	for _, m := range idx.Manifests {
		if m.Annotations["vnd.docker.reference.type"] == "attestation-manifest" {
			attestations++
			if _, err := remote.Image(mpRef(t, reg+"/team/app@"+m.Digest.String())); err != nil {
				t.Errorf("attestation manifest %s not readable: %v", m.Digest, err)
			}
			continue
		}
		plats = append(plats, m.Platform.OS+"/"+m.Platform.Architecture)
		img, err := remote.Image(mpRef(t, reg+"/team/app@"+m.Digest.String()))
		if err != nil {
			t.Fatalf("pull %s: %v", m.Digest, err)
		}
		if got := mpImageFile(t, img, "/arch"); got != mpWantArch[plats[len(plats)-1]] {
			t.Errorf("%s image: uname -m = %q", plats[len(plats)-1], got)
		}
	}
	slices.Sort(plats)
	if !slices.Equal(plats, []string{"linux/amd64", "linux/arm64"}) || attestations != 2 {
		t.Errorf("pushed index: platforms %v, %d attestation manifests; want both platforms and 2", plats, attestations)
	}
	// kiln pull picks one platform of the saved index.
	d := startDockerd(t)
	s.mustKilnEnv(t, t.TempDir(), []string{"DOCKER_HOST=" + d.Host}, "pull", id, "--platform", "linux/arm64", "-t", "multi:arm")
	if out, err := d.docker(t, "image", "inspect", "--format", "{{.Os}}/{{.Architecture}}", "multi:arm"); err != nil || strings.TrimSpace(out) != "linux/arm64" {
		t.Errorf("pulled --platform linux/arm64: %q, %v", out, err)
	}

	// The build records where it was pushed.
	var names []string
	for _, st := range s.steps(t, proj, id) {
		if strings.HasPrefix(st.Name, "pushing ") && strings.Contains(st.Name, reg) {
			names = append(names, st.Name)
		}
	}
	if len(names) != 2 {
		t.Errorf("push steps recorded: %v", names)
	}
}
