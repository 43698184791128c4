package sdk_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/kiln-dev/kiln/internal/kilntest"
	"github.com/kiln-dev/kiln/sdk"
)

// The tests drive kiln only through package sdk, as a program embedding
// it does; kilntest provides the server (see TestMain) and busybox-based
// contexts, go-containerregistry reads what was built.

func TestBuildDirectory(t *testing.T) {
	dir := writeContext(t, map[string]string{"Dockerfile": kilntest.BaseStages +
		"FROM busybox\nLABEL org.example.built=yes\nRUN echo built-by-sdk > /built.txt\n"})
	var mu sync.Mutex
	var events []sdk.Event
	b, err := sdk.NewBuilder(nil, sdk.WithContextDir(dir), sdk.WithTags("sdk-dir"),
		sdk.WithProgress(func(e sdk.Event) { mu.Lock(); events = append(events, e); mu.Unlock() }))
	if err != nil {
		t.Fatal(err)
	}
	idx, md, err := b.Execute(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	img := platformImage(t, idx)
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if got := cf.Config.Labels["org.example.built"]; got != "yes" {
		t.Errorf("label org.example.built = %q, want yes", got)
	}
	if got := fileIn(t, img, "built.txt"); got != "built-by-sdk\n" {
		t.Errorf("/built.txt = %q", got)
	}

	if md.BuildID == "" || md.ProjectID != os.Getenv("KILN_PROJECT_ID") {
		t.Errorf("metadata names build %q in project %q", md.BuildID, md.ProjectID)
	}
	if d, err := idx.Digest(); err != nil || d != md.Digest {
		t.Errorf("index digest %s (%v), metadata digest %s", d, err, md.Digest)
	}
	if !hasSuffix(md.Refs, ":"+md.BuildID) || !hasSuffix(md.Refs, ":sdk-dir") {
		t.Errorf("refs %v: want <project>:<build id> and <project>:sdk-dir", md.Refs)
	}
	var meta map[string]any
	if err := json.Unmarshal(md.BuildxMetadata, &meta); err != nil {
		t.Fatalf("buildx metadata: %v\n%s", err, md.BuildxMetadata)
	}
	if meta["containerimage.digest"] != md.Digest.String() || meta["buildx.build.ref"] != "kiln/"+md.ProjectID+"/"+md.BuildID {
		t.Errorf("buildx metadata %s", md.BuildxMetadata)
	}
	run := findStep(md.Steps, "RUN echo built-by-sdk")
	if run == nil || run.Cached || run.Duration <= 0 || run.Error != "" {
		t.Errorf("RUN step in metadata: %+v", run)
	}

	// Progress: the RUN step started, then completed; nothing ended twice.
	mu.Lock()
	defer mu.Unlock()
	var seq []sdk.EventType
	ends := map[string]int{}
	for _, e := range events {
		if strings.Contains(e.Step.Name, "RUN echo built-by-sdk") && e.Type != sdk.Log {
			seq = append(seq, e.Type)
		}
		switch e.Type {
		case sdk.StepCompleted, sdk.StepCached, sdk.StepFailed:
			ends[e.Step.Digest]++
		}
	}
	if fmt.Sprint(seq) != "[started completed]" {
		t.Errorf("RUN step events %v, want [started completed]", seq)
	}
	for d, n := range ends {
		if n != 1 {
			t.Errorf("step %s ended %d times", d, n)
		}
	}
}

func TestBuildArgsAndSecretReachRun(t *testing.T) {
	dir := writeContext(t, map[string]string{"Dockerfile": kilntest.BaseStages + `FROM busybox
ARG GREETING
RUN --mount=type=secret,id=token test "$(cat /run/secrets/token)" = "s3cret-value" && echo "$GREETING" > /greeting && echo checked > /secret-ok
`})
	var logs strings.Builder
	b, err := sdk.NewBuilder(nil, sdk.WithContextDir(dir), sdk.WithBuildArg("GREETING", "hello from sdk"),
		sdk.WithSecret("token", "s3cret-value"), sdk.WithNoCache(),
		sdk.WithProgress(func(e sdk.Event) {
			if e.Type == sdk.Log {
				logs.WriteString(e.Log)
			}
		}))
	if err != nil {
		t.Fatal(err)
	}
	idx, _, err := b.Execute(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	img := platformImage(t, idx)
	if got := fileIn(t, img, "greeting"); got != "hello from sdk\n" {
		t.Errorf("/greeting = %q", got)
	}
	if got := fileIn(t, img, "secret-ok"); got != "checked\n" {
		t.Errorf("/secret-ok = %q: the secret did not reach RUN", got)
	}
	if layersContain(t, img, "s3cret-value") {
		t.Error("the secret's value is in the image")
	}
	if strings.Contains(logs.String(), "s3cret-value") {
		t.Error("the secret's value is in the build's log")
	}
}

func TestBuildTarContext(t *testing.T) {
	archive := tarOf(t, map[string]string{
		"Dockerfile":     "FROM scratch\nCOPY from-tar.txt /\n",
		"from-tar.txt":   "packed\n",
		"sub/Dockerfile": "FROM scratch\nCOPY from-tar.txt /other.txt\n",
	}, false)
	b, err := sdk.NewBuilder(nil, sdk.WithContextTar(bytes.NewReader(archive)), sdk.WithDockerfile("sub/Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	idx, _, err := b.Execute(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if got := fileIn(t, platformImage(t, idx), "other.txt"); got != "packed\n" {
		t.Errorf("/other.txt = %q", got)
	}
}

func TestBuildUploadedContext(t *testing.T) {
	archive := tarOf(t, map[string]string{
		"Dockerfile":   "FROM scratch\nARG WHO\nCOPY uploaded.txt /${WHO}.txt\n",
		"uploaded.txt": "uploaded through the sdk\n",
	}, true)
	key, err := sdk.UploadContext(ctx(t), bytes.NewReader(archive))
	if err != nil {
		t.Fatal(err)
	}
	reg := httptest.NewServer(registry.New(registry.Logger(discard())))
	defer reg.Close()
	ref, err := name.ParseReference(strings.TrimPrefix(reg.URL, "http://") + "/platform/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	var steps atomic.Int32
	b, err := sdk.NewBuilder(ref, sdk.WithUploadedContext(key), sdk.WithBuildArg("WHO", "platform"), sdk.WithTags("uploaded"),
		sdk.WithProgress(func(e sdk.Event) {
			if e.Type == sdk.StepStarted {
				steps.Add(1)
			}
		}))
	if err != nil {
		t.Fatal(err)
	}
	idx, md, err := b.Execute(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if got := fileIn(t, platformImage(t, idx), "platform.txt"); got != "uploaded through the sdk\n" {
		t.Errorf("/platform.txt = %q", got)
	}
	if !hasSuffix(md.Refs, ":"+md.BuildID) || !hasSuffix(md.Refs, ":uploaded") || md.Refs[len(md.Refs)-1] != ref.String() {
		t.Errorf("refs %v", md.Refs)
	}
	// An uploaded context's image is copied to the reference from here:
	// the same index.
	if desc, err := remote.Head(ref); err != nil || desc.Digest != md.Digest {
		t.Errorf("%s: %v (%v); want %s", ref, desc, err, md.Digest)
	}
	if steps.Load() == 0 || len(md.Steps) == 0 {
		t.Errorf("no steps reported (%d events, %d in metadata)", steps.Load(), len(md.Steps))
	}
}

func TestSSHKeyAndRegistryCache(t *testing.T) {
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	reg := httptest.NewServer(registry.New(registry.Logger(discard())))
	defer reg.Close()
	cache, err := name.ParseReference(strings.TrimPrefix(reg.URL, "http://") + "/cache/app:buildcache")
	if err != nil {
		t.Fatal(err)
	}
	dir := writeContext(t, map[string]string{"Dockerfile": kilntest.BaseStages + `FROM busybox
RUN --mount=type=ssh,id=deploy test -S "$SSH_AUTH_SOCK" && echo agent > /ssh-ok
`})
	b, err := sdk.NewBuilder(nil, sdk.WithContextDir(dir), sdk.WithSSHKey("deploy", keyPEM), sdk.WithRegistryCache(cache))
	if err != nil {
		t.Fatal(err)
	}
	idx, _, err := b.Execute(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if got := fileIn(t, platformImage(t, idx), "ssh-ok"); got != "agent\n" {
		t.Errorf("/ssh-ok = %q: no agent in RUN --mount=type=ssh", got)
	}
	if _, err := remote.Head(cache); err != nil {
		t.Errorf("no cache exported to %s: %v", cache, err)
	}
	if layersContain(t, platformImage(t, idx), "PRIVATE KEY") {
		t.Error("the key is in the image")
	}
}

func TestFailingStepIsNamed(t *testing.T) {
	dir := writeContext(t, map[string]string{"Dockerfile": kilntest.BaseStages + "FROM busybox\nRUN echo about to fail && exit 3\n"})
	b, err := sdk.NewBuilder(nil, sdk.WithContextDir(dir))
	if err != nil {
		t.Fatal(err)
	}
	_, md, err := b.Execute(ctx(t))
	var be *sdk.BuildError
	if !errors.As(err, &be) {
		t.Fatalf("err = %v (%T), want a *sdk.BuildError", err, err)
	}
	if !strings.Contains(be.Step, "RUN echo about to fail && exit 3") || !strings.Contains(err.Error(), "exit 3") {
		t.Errorf("error %q names step %q", err, be.Step)
	}
	if md == nil || md.BuildID != be.BuildID || findStep(md.Steps, "exit 3") == nil {
		t.Errorf("metadata of the failed build: %+v", md)
	}
}

// A Builder given a reference has the builder push the image there too.
// The image is the same; the index around it is not (BuildKit attaches
// provenance per destination), so the images are compared.
func TestPushToReference(t *testing.T) {
	reg := httptest.NewServer(registry.New(registry.Logger(discard())))
	defer reg.Close()
	ref, err := name.ParseReference(strings.TrimPrefix(reg.URL, "http://") + "/team/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	dir := writeContext(t, map[string]string{"Dockerfile": "FROM scratch\nCOPY Dockerfile /pushed\n"})
	b, err := sdk.NewBuilder(ref, sdk.WithContextDir(dir))
	if err != nil {
		t.Fatal(err)
	}
	saved, md, err := b.Execute(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if md.Refs[len(md.Refs)-1] != ref.String() {
		t.Errorf("refs %v: want %s last", md.Refs, ref)
	}
	pushed, err := remote.Index(ref)
	if err != nil {
		t.Fatalf("the image is not at %s: %v", ref, err)
	}
	want, err := platformImage(t, saved).Digest()
	if err != nil {
		t.Fatal(err)
	}
	if got, err := platformImage(t, pushed).Digest(); err != nil || got != want {
		t.Errorf("%s holds image %s (%v); kiln's registry %s", ref, got, err, want)
	}
}

func TestBadOptionsFailBeforeTheServer(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		http.Error(w, "no", http.StatusTeapot)
	}))
	defer srv.Close()
	server := sdk.WithServer(srv.URL, "token")
	dir := t.TempDir()
	for name, opts := range map[string][]sdk.Option{
		"empty secret id":   {sdk.WithContextDir(dir), sdk.WithSecret("", "v")},
		"bad platform":      {sdk.WithContextDir(dir), sdk.WithPlatforms("linux/amd64", "plan9/mips")},
		"no context":        {},
		"two contexts":      {sdk.WithContextDir(dir), sdk.WithUploadedContext("k")},
		"ssh with uploaded": {sdk.WithUploadedContext("k"), sdk.WithSSHKey("default", []byte("-----BEGIN OPENSSH PRIVATE KEY-----\nAA==\n-----END OPENSSH PRIVATE KEY-----\n"))},
		"bad tag":           {sdk.WithContextDir(dir), sdk.WithTags("-nope")},
		"file git context":  {sdk.WithGitContext("file:///srv/repo.git")},
		"git and dir":       {sdk.WithContextDir(dir), sdk.WithGitContext("https://example.com/r.git#main")},
	} {
		_, err := sdk.NewBuilder(nil, append(opts, server)...)
		if !errors.Is(err, sdk.ErrInvalid) {
			t.Errorf("%s: err = %v, want sdk.ErrInvalid", name, err)
		}
	}
	// A context without a Dockerfile is found out at Execute, still
	// before anything is asked of the server.
	b, err := sdk.NewBuilder(nil, sdk.WithContextDir(dir), server, sdk.WithProject("p"))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.Execute(ctx(t)); !errors.Is(err, sdk.ErrInvalid) || !strings.Contains(err.Error(), "Dockerfile") {
		t.Errorf("Execute without a Dockerfile: err = %v", err)
	}
	if n := calls.Load(); n != 0 {
		t.Errorf("the server was called %d times", n)
	}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	return c
}

func writeContext(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	if err := kilntest.WriteContext(dir, files); err != nil {
		t.Fatal(err)
	}
	return dir
}

// tarOf is a tar archive (gzip'd when gz) of files.
func tarOf(t *testing.T, files map[string]string, gz bool) []byte {
	t.Helper()
	var buf bytes.Buffer
	var w io.Writer = &buf
	var zw *gzip.Writer
	if gz {
		zw = gzip.NewWriter(&buf)
		w = zw
	}
	tw := tar.NewWriter(w)
	for name, content := range files {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(content)), ModTime: time.Unix(0, 0)}); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(content))
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if zw != nil {
		zw.Close()
	}
	return buf.Bytes()
}

// platformImage is the index's image (not an attestation manifest).
func platformImage(t *testing.T, idx v1.ImageIndex) v1.Image {
	t.Helper()
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range im.Manifests {
		if d.Platform != nil && d.Platform.Architecture == "unknown" {
			continue
		}
		img, err := idx.Image(d.Digest)
		if err != nil {
			t.Fatal(err)
		}
		return img
	}
	t.Fatalf("no image in the index: %+v", im.Manifests)
	return nil
}

// fileIn is the content of a file of img's filesystem ("" if absent).
func fileIn(t *testing.T, img v1.Image, path string) string {
	t.Helper()
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return ""
		}
		if err != nil {
			t.Fatal(err)
		}
		if strings.TrimPrefix(h.Name, "/") == path {
			b, _ := io.ReadAll(tr)
			return string(b)
		}
	}
}

// layersContain reports whether any layer of img holds needle.
func layersContain(t *testing.T, img v1.Image, needle string) bool {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(rc)
		rc.Close()
		if bytes.Contains(b, []byte(needle)) {
			return true
		}
	}
	return false
}

func findStep(steps []sdk.Step, part string) *sdk.Step {
	for i := range steps {
		if strings.Contains(steps[i].Name, part) {
			return &steps[i]
		}
	}
	return nil
}

func hasSuffix(refs []string, suffix string) bool {
	for _, r := range refs {
		if strings.HasSuffix(r, suffix) {
			return true
		}
	}
	return false
}

func discard() *log.Logger { return log.New(io.Discard, "", 0) }

func TestBuildPlatforms(t *testing.T) {
	dir := writeContext(t, map[string]string{"Dockerfile": "FROM scratch\nARG TARGETARCH\nCOPY Dockerfile /built-for-${TARGETARCH}\n"})
	b, err := sdk.NewBuilder(nil, sdk.WithContextDir(dir), sdk.WithPlatforms("linux/amd64", "arm64"))
	if err != nil {
		t.Fatal(err)
	}
	idx, _, err := b.Execute(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, d := range im.Manifests {
		if d.Platform == nil || d.Platform.Architecture == "unknown" {
			continue
		}
		img, err := idx.Image(d.Digest)
		if err != nil {
			t.Fatal(err)
		}
		if fileIn(t, img, "built-for-"+d.Platform.Architecture) == "" {
			t.Errorf("%s image has no /built-for-%s", d.Platform, d.Platform.Architecture)
		}
		got = append(got, d.Platform.String())
	}
	if fmt.Sprint(got) != "[linux/amd64 linux/arm64]" {
		t.Errorf("platforms %v", got)
	}
}
