package cli

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/kiln-dev/kiln/internal/archive"
	"github.com/kiln-dev/kiln/internal/buildreq"
	"github.com/kiln-dev/kiln/internal/errdefs"
)

// writeTree writes files (name → content; a trailing "/" makes a dir).
func writeTree(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if strings.HasSuffix(name, "/") {
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

type tarEntry struct {
	hdr     *tar.Header
	content string
}

// readArchive lists a tar.gz's entries in order.
func readArchive(t *testing.T, b []byte) ([]string, map[string]tarEntry) {
	t.Helper()
	gz, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(gz)
	var names []string
	entries := map[string]tarEntry{}
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		content, _ := io.ReadAll(tr)
		names = append(names, hdr.Name)
		entries[hdr.Name] = tarEntry{hdr, string(content)}
	}
	return names, entries
}

func TestDetachUploadsContextAndCreatesBuild(t *testing.T) {
	f := newFakeSourceBuilds(t)
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{
		"Dockerfile":        "FROM busybox\nCOPY . /src\n",
		".dockerignore":     "# comment\nnode_modules\n*.log\n!keep.log\nsecret/\nDockerfile\n.dockerignore\n",
		"app/main.go":       "package main\n",
		"app/empty/":        "",
		"node_modules/x.js": "x",
		"debug.log":         "noise",
		"keep.log":          "kept",
		"secret/key":        "hunter2",
	})
	if err := os.Symlink("app/main.go", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(dir, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	secretFile := filepath.Join(t.TempDir(), "npmrc")
	writeTree(t, filepath.Dir(secretFile), map[string]string{"npmrc": "//registry/:_authToken=abc"})
	t.Setenv("KILN_TEST_TOKEN", "from-env")
	t.Setenv("npm_alone", "alone-from-env")
	t.Setenv("FROM_ENV", "env-value")
	os.Unsetenv("KILN_TEST_UNSET")

	stdout, stderr, err := runKiln(t, f, "build", "--detach", "--project", "p1", dir,
		"-t", "v1", "-t", "web:latest", "--platform", "linux/amd64, linux/arm64", "--no-cache", "--target", "runtime",
		"--build-arg", "A=1", "--build-arg", "FROM_ENV", "--build-arg", "KILN_TEST_UNSET",
		"--secret", "id=npm,src="+secretFile, "--secret", "id=tok,env=KILN_TEST_TOKEN", "--secret", "id=npm_alone")
	if err != nil {
		t.Fatalf("%v\nstderr: %s", err, stderr)
	}
	if stdout != "b1\n" {
		t.Errorf("stdout = %q, want exactly the build id", stdout)
	}
	if !strings.Contains(stderr, "build b1 queued in project p1; follow it with: kiln builds logs -f b1\n") {
		t.Errorf("stderr lacks the queued line:\n%s", stderr)
	}
	if !strings.Contains(stderr, "kiln: warning: skipping fifo: a named pipe cannot be sent") {
		t.Errorf("stderr lacks the fifo warning:\n%s", stderr)
	}
	if !strings.Contains(stderr, "uploading context: ") || !strings.Contains(stderr, "uploaded context: ") {
		t.Errorf("stderr lacks the upload progress lines:\n%s", stderr)
	}

	// What was PUT is what GenerateUploadURL announced.
	sum := sha256.Sum256(f.uploaded)
	if f.uploadReq.Size != int64(len(f.uploaded)) || f.uploadReq.Sha256 != hex.EncodeToString(sum[:]) {
		t.Errorf("announced size %d sha256 %s; PUT %d bytes sha256 %x", f.uploadReq.Size, f.uploadReq.Sha256, len(f.uploaded), sum)
	}
	if f.uploadReq.GetProject().GetProjectId() != "p1" {
		t.Errorf("GenerateUploadURL project = %v", f.uploadReq.Project)
	}
	if f.uploadHeader.Get("X-Kiln-Upload") != "yes" {
		t.Error("the PUT lacks the header the server asked for")
	}
	if f.uploadHeader.Get("Authorization") != "" {
		t.Error("the API token was sent to the upload URL")
	}

	names, entries := readArchive(t, f.uploaded)
	want := []string{".dockerignore", "Dockerfile", "app/", "app/empty/", "app/main.go", "keep.log", "link"}
	if !slices.Equal(names, want) {
		t.Errorf("archive entries %q, want %q", names, want)
	}
	for name, e := range entries {
		if e.hdr.Uid != 0 || e.hdr.Gid != 0 || e.hdr.Uname != "" || e.hdr.Gname != "" {
			t.Errorf("%s: owner %d:%d (%s:%s), want 0:0", name, e.hdr.Uid, e.hdr.Gid, e.hdr.Uname, e.hdr.Gname)
		}
	}
	if e := entries["link"]; e.hdr.Typeflag != tar.TypeSymlink || e.hdr.Linkname != "app/main.go" {
		t.Errorf("link: type %c -> %q", e.hdr.Typeflag, e.hdr.Linkname)
	}
	if entries["app/main.go"].content != "package main\n" {
		t.Errorf("app/main.go = %q", entries["app/main.go"].content)
	}

	c := f.createReq
	if c.ContextKey != "ctx-1" || c.Dockerfile != "Dockerfile" || c.Target != "runtime" || !c.NoCache {
		t.Errorf("CreateBuild: key %q dockerfile %q target %q no_cache %v", c.ContextKey, c.Dockerfile, c.Target, c.NoCache)
	}
	if c.GetProject().GetProjectId() != "p1" {
		t.Errorf("CreateBuild project = %v", c.Project)
	}
	if !slices.Equal(c.Tags, []string{"v1", "web:latest"}) || !slices.Equal(c.Platforms, []string{"linux/amd64", "linux/arm64"}) {
		t.Errorf("CreateBuild tags %q platforms %q", c.Tags, c.Platforms)
	}
	if want := map[string]string{"A": "1", "FROM_ENV": "env-value"}; !maps.Equal(c.BuildArgs, want) {
		t.Errorf("build args %v, want %v", c.BuildArgs, want)
	}
	if want := map[string]string{"npm": "//registry/:_authToken=abc", "tok": "from-env", "npm_alone": "alone-from-env"}; !maps.Equal(c.Secrets, want) {
		t.Errorf("secrets %v, want %v", c.Secrets, want)
	}
	if f.authorization != "Bearer tok-test" {
		t.Errorf("Authorization = %q", f.authorization)
	}
}

// The same tree packs to the same bytes.
func TestDetachArchiveIsDeterministic(t *testing.T) {
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{"Dockerfile": "FROM scratch\n", "b/c": "c", "a": "a", "b-d": "d"})
	var sums []string
	for range 2 {
		a, err := packContext(dir, filepath.Join(dir, "Dockerfile"), func(string) {})
		if err != nil {
			t.Fatal(err)
		}
		sums = append(sums, a.sha256)
		b, _ := os.ReadFile(a.path)
		names, _ := readArchive(t, b)
		// Sorted by path: a parent before its children.
		if want := []string{"Dockerfile", "a", "b/", "b-d", "b/c"}; !slices.Equal(names, want) {
			t.Errorf("order %q, want %q", names, want)
		}
		a.Close()
		if _, err := os.Stat(a.path); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("Close left %s", a.path)
		}
	}
	if sums[0] != sums[1] {
		t.Errorf("two packs of one tree differ: %s %s", sums[0], sums[1])
	}
}

func TestDetachDockerfileInsideIgnoredDir(t *testing.T) {
	f := newFakeSourceBuilds(t)
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{
		"docker/Dockerfile.dev": "FROM busybox\n",
		"docker/other":          "ignored",
		".dockerignore":         "docker\n",
		"src/a":                 "a",
	})
	_, stderr, err := runKiln(t, f, "build", "--detach", "--project", "p1", "-f", filepath.Join(dir, "docker/Dockerfile.dev"), dir)
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	if f.createReq.Dockerfile != "docker/Dockerfile.dev" {
		t.Errorf("dockerfile = %q", f.createReq.Dockerfile)
	}
	names, _ := readArchive(t, f.uploaded)
	if want := []string{".dockerignore", "docker/", "docker/Dockerfile.dev", "src/", "src/a"}; !slices.Equal(names, want) {
		t.Errorf("archive entries %q, want %q", names, want)
	}
}

func TestDetachDockerfileOutsideContext(t *testing.T) {
	f := newFakeSourceBuilds(t)
	root := t.TempDir()
	writeTree(t, root, map[string]string{
		"ctx/main.go":                      "package main\n",
		"ctx/.kiln/Dockerfile":             "stale",
		"build/Containerfile":              "FROM golang\n",
		"build/Containerfile.dockerignore": "*.tmp\n",
		"ctx/x.tmp":                        "tmp",
	})
	// -f relative to the working directory, as buildx; the context
	// through a link.
	if err := os.Symlink(filepath.Join(root, "ctx"), filepath.Join(root, "ctxlink")); err != nil {
		t.Fatal(err)
	}
	t.Chdir(root)
	_, stderr, err := runKiln(t, f, "build", "--detach", "--project", "p1", "-f", "build/Containerfile", "ctxlink")
	if err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	if f.createReq.Dockerfile != ".kiln/Dockerfile" {
		t.Errorf("dockerfile = %q, want .kiln/Dockerfile", f.createReq.Dockerfile)
	}
	names, entries := readArchive(t, f.uploaded)
	if want := []string{".kiln/", ".kiln/Dockerfile", "main.go"}; !slices.Equal(names, want) {
		t.Errorf("archive entries %q, want %q", names, want)
	}
	if got := entries[".kiln/Dockerfile"].content; got != "FROM golang\n" {
		t.Errorf(".kiln/Dockerfile = %q", got)
	}
	if !strings.Contains(stderr, ".kiln/Dockerfile in the build context is replaced") {
		t.Errorf("no warning about the replaced .kiln/Dockerfile:\n%s", stderr)
	}
}

func TestDetachCustomer(t *testing.T) {
	f := newFakeSourceBuilds(t)
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{"Dockerfile": "FROM busybox\n"})
	stdout, _, err := runKiln(t, f, "build", "--detach", "--customer", "acme-42", "--progress", "quiet", dir)
	if err != nil {
		t.Fatal(err)
	}
	if stdout != "b1\n" {
		t.Errorf("stdout = %q", stdout)
	}
	if f.uploadReq.GetProject().GetCustomerId() != "acme-42" {
		t.Errorf("GenerateUploadURL project = %v", f.uploadReq.Project)
	}
	if f.createReq.GetProject().GetCustomerId() != "acme-42" {
		t.Errorf("CreateBuild project = %v", f.createReq.Project)
	}
}

func TestDetachIncompatibleFlags(t *testing.T) {
	f := newFakeSourceBuilds(t)
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{"Dockerfile": "FROM busybox\n"})
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--load"}, "--load cannot be used with --detach: the image is pushed to kiln's registry as <project>:<build id> and the -t tags"},
		{[]string{"--push"}, "--push cannot be used with --detach"},
		{[]string{"-o", "type=local,dest=out"}, "--output cannot be used with --detach"},
		{[]string{"--ssh", "default"}, "--ssh cannot be used with --detach"},
		{[]string{"--build-context", "x=../x"}, "--build-context cannot be used with --detach"},
		{[]string{"--cache-from", "reg/app:cache"}, "--cache-from cannot be used with --detach"},
		{[]string{"--cache-to", "type=inline"}, "--cache-to cannot be used with --detach"},
		{[]string{"--call", "check"}, "--call cannot be used with --detach"},
		{[]string{"--check"}, "--check cannot be used with --detach"},
		{[]string{"--lint"}, "--lint cannot be used with --detach"},
		{[]string{"--save"}, "--save cannot be used with --detach"},
		{[]string{"--save-tag", "v1"}, "--save-tag cannot be used with --detach"},
		{[]string{"--iidfile", "id.txt"}, "--iidfile cannot be used with --detach"},
		{[]string{"--metadata-file", "m.json"}, "--metadata-file cannot be used with --detach"},
		{[]string{"--label", "a=b"}, "--label cannot be used with --detach"},
		{[]string{"--attest", "type=sbom"}, "--attest cannot be used with --detach"},
		{[]string{"--provenance", "mode=max"}, "--provenance cannot be used with --detach"},
		{[]string{"--sbom", "true"}, "--sbom cannot be used with --detach"},
		{[]string{"--network", "none"}, "--network cannot be used with --detach"},
		{[]string{"--customer", "acme", "--project", "p1"}, "--customer and --project: give one"},
		{[]string{"-f", "-"}, `-f "-" cannot be used with --detach`},
	} {
		args := append([]string{"build", "--detach", "--project", "p1", dir}, tc.args...)
		if tc.args[0] == "--customer" {
			args = append([]string{"build", "--detach", dir}, tc.args...)
		}
		_, _, err := runKiln(t, f, args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want %q", tc.args, err, tc.want)
		} else if !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("%q: error %v is not ErrInvalid", tc.args, err)
		}
	}
	// Defaults given explicitly are fine.
	if _, _, err := runKiln(t, f, "build", "--detach", "--project", "p1", "--network", "default", "--call", "build", "--progress", "quiet", dir); err != nil {
		t.Errorf("explicit defaults refused: %v", err)
	}
	if _, _, err := runKiln(t, f, "build", "--customer", "acme", dir); err == nil || !strings.Contains(err.Error(), "--customer needs --detach") {
		t.Errorf("--customer without --detach: %v", err)
	}
	if _, _, err := runKiln(t, f, "build", "--detach", "--project", "p1", "-"); err == nil || !strings.Contains(err.Error(), "--detach needs a context directory") {
		t.Errorf("stdin context: %v", err)
	}
	if f.puts != 1 {
		t.Errorf("%d uploads; only the explicit-defaults build should upload", f.puts)
	}
}

func TestDetachUploadRefused(t *testing.T) {
	f := newFakeSourceBuilds(t)
	f.putStatuses = []int{http.StatusForbidden}
	f.putBody = "<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>"
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{"Dockerfile": "FROM busybox\n"})
	stdout, _, err := runKiln(t, f, "build", "--detach", "--project", "p1", dir)
	if err == nil || !strings.Contains(err.Error(), "403 Forbidden") || !strings.Contains(err.Error(), "Request has expired") {
		t.Fatalf("error %v, want the status and the body", err)
	}
	if !errors.Is(err, errdefs.ErrPermission) {
		t.Errorf("error %v is not ErrPermission", err)
	}
	if strings.Contains(err.Error(), f.url) {
		t.Errorf("error names the upload URL: %v", err)
	}
	if stdout != "" || f.createReq != nil || f.puts != 1 {
		t.Errorf("stdout %q, CreateBuild %v, %d PUTs: a refused upload must stop before CreateBuild, untried", stdout, f.createReq, f.puts)
	}
}

func TestDetachUploadRetriesUnavailable(t *testing.T) {
	f := newFakeSourceBuilds(t)
	f.putStatuses = []int{http.StatusServiceUnavailable}
	f.putBody = "SlowDown"
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{"Dockerfile": "FROM busybox\n"})
	stdout, _, err := runKiln(t, f, "build", "--detach", "--project", "p1", "--progress", "quiet", dir)
	if err != nil {
		t.Fatal(err)
	}
	if stdout != "b1\n" || f.puts != 2 {
		t.Errorf("stdout %q after %d PUTs", stdout, f.puts)
	}
	sum := sha256.Sum256(f.uploaded)
	if f.uploadReq.Sha256 != hex.EncodeToString(sum[:]) {
		t.Error("the retried upload differs from the announced one")
	}
}

func TestDetachSecretErrors(t *testing.T) {
	os.Unsetenv("KILN_TEST_NOPE")
	dir := t.TempDir()
	detachSecrets := func(values []string) (map[string]string, error) {
		parsed, err := buildreq.ParseFlags(buildreq.Flags{ContextPath: dir, Secrets: values})
		if err != nil {
			return nil, err
		}
		return secretValues(parsed.Secrets)
	}
	for _, tc := range []struct{ secret, want string }{
		{"id=a,env=KILN_TEST_NOPE", "KILN_TEST_NOPE is not set"},
		{"src=/x", "missing id="},
		{"id=a,src=/nonexistent/kiln", "no such file"},
		{"id=a,foo=b", `unknown key "foo"`},
		{"id=a,src=x,env=Y", "not both"},
	} {
		_, err := detachSecrets([]string{tc.secret})
		if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("--secret %s: %v, want %q", tc.secret, err, tc.want)
		}
	}
	if _, err := detachSecrets([]string{"id=a,env=HOME", "id=a,env=HOME"}); err == nil || !strings.Contains(err.Error(), "duplicate") {
		t.Errorf("duplicate id: %v", err)
	}
}

// An output dir with an absolute symlink (out/bin/[ -> /bin/busybox) is an
// ordinary context: packed as a link, never followed, and the server's
// extractor keeps it. A context the server would refuse fails before any
// upload, naming the file.
func TestDetachContextSymlinksAndRefusals(t *testing.T) {
	f := newFakeSourceBuilds(t)
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{"Dockerfile": "FROM busybox\n", "out/bin/busybox": "x"})
	if err := os.Symlink("/bin/busybox", filepath.Join(dir, "out/bin/[")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../../../elsewhere", filepath.Join(dir, "out/bin/up")); err != nil {
		t.Fatal(err)
	}
	if _, stderr, err := runKiln(t, f, "build", "--detach", "--project", "p1", dir); err != nil {
		t.Fatalf("%v\nstderr: %s", err, stderr)
	}
	_, entries := readArchive(t, f.uploaded)
	if e := entries["out/bin/["]; e.hdr.Typeflag != tar.TypeSymlink || e.hdr.Linkname != "/bin/busybox" {
		t.Errorf("out/bin/[: type %c -> %q; want the symlink as it is", e.hdr.Typeflag, e.hdr.Linkname)
	}
	root := filepath.Join(t.TempDir(), "x")
	os.Mkdir(root, 0o700)
	if _, err := archive.Extract(bytes.NewReader(f.uploaded), root, archive.Limits{}, archive.Policy{RejectSpecialBits: true}); err != nil {
		t.Fatalf("the server's extractor refuses the uploaded context: %v", err)
	}
	if got, _ := os.Readlink(filepath.Join(root, "out/bin/[")); got != "/bin/busybox" {
		t.Errorf("extracted out/bin/[ -> %q", got)
	}

	// Deeper than the server's limit: refused before the upload.
	f = newFakeSourceBuilds(t)
	deep := t.TempDir()
	long := strings.Repeat("d/", 70) + "f"
	writeTree(t, deep, map[string]string{"Dockerfile": "FROM busybox\n", long: "x"})
	_, _, err := runKiln(t, f, "build", "--detach", "--project", "p1", deep)
	if err == nil || !strings.Contains(err.Error(), "build context file "+filepath.Join(deep, "d/d/d")) || !strings.Contains(err.Error(), "deeper than 64") {
		t.Errorf("a too-deep context: %v; want a refusal naming the file", err)
	}
	if f.uploaded != nil || f.uploadReq != nil {
		t.Error("the refused context was uploaded")
	}
}
