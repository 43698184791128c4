package runner

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/archive"
	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/build"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/project"
	"github.com/kiln-dev/kiln/internal/store"
)

// quotaRunner is a runner over a real store and local blob store with
// projects p1 and p2 of org o1, and project tokens' principals for both.
func quotaRunner(t *testing.T, cfg Config) (*Runner, *store.SQLite, auth.Principal, auth.Principal) {
	t.Helper()
	ctx := context.Background()
	st, blobs, dir := testStores(t)
	st.CreateOrganization(ctx, project.Organization{ID: "o1", Name: "o1"})
	for _, p := range []string{"p1", "p2"} {
		st.CreateProject(ctx, project.Project{ID: p, OrgID: "o1", Name: p})
	}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg.WorkDir, cfg.SecretsKey, cfg.Logger = filepath.Join(dir, "work"), []byte(strings.Repeat("k", 32)), logger
	r, err := New(st, blobs, build.NewService(st, nil, nil, build.Config{}, logger), &project.Service{Store: st}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	p1 := auth.Principal{TokenID: "t1", Kind: auth.TokenProject, OrgID: "o1", ProjectID: "p1"}
	p2 := auth.Principal{TokenID: "t2", Kind: auth.TokenProject, OrgID: "o1", ProjectID: "p2"}
	return r, st, p1, p2
}

// A project filling its upload quota gets ResourceExhausted saying what to
// do; an undeclared upload gets a URL for what is left; another project is
// untouched; what was never uploaded, or was smaller than reserved, stops
// counting once settled.
func TestUploadQuotaFromTheAttackersSide(t *testing.T) {
	ctx := context.Background()
	r, st, p1, p2 := quotaRunner(t, Config{MaxContextBytesPerProject: 1000, Archive: archive.Limits{CompressedBytes: 600}, UploadTTL: 300 * time.Millisecond})
	declared, err := r.Upload(ctx, p1, "", "", 500, "")
	if err != nil {
		t.Fatal(err)
	}
	_, err = r.Upload(ctx, p1, "", "", 600, "")
	if !errors.Is(err, errdefs.ErrExhausted) || !strings.Contains(err.Error(), "quota of 1000 B") || !strings.Contains(err.Error(), "--max-context-bytes-per-project") {
		t.Errorf("an upload over the quota: %v; want ErrExhausted naming the quota and what to do", err)
	}
	undeclared, err := r.Upload(ctx, p1, "", "", 0, "")
	if err != nil || undeclared.MaxSize != 500 {
		t.Fatalf("undeclared upload with 500 B left: max %d, %v; want a URL for 500 B", undeclared.MaxSize, err)
	}
	if _, err := r.Upload(ctx, p1, "", "", 0, ""); !errors.Is(err, errdefs.ErrExhausted) {
		t.Errorf("undeclared upload with nothing left: %v; want ErrExhausted", err)
	}
	if _, err := r.Upload(ctx, p2, "", "", 600, ""); err != nil {
		t.Errorf("another project's upload while p1 is full: %v", err)
	}

	// The undeclared URL takes at most what it reserved.
	c, _ := st.GetContext(ctx, undeclared.ContextKey)
	if err := r.blobs.Put(ctx, c.BlobKey, strings.NewReader("0123456789"), 10); err != nil {
		t.Fatal(err)
	}
	// Once settled it counts its 10 bytes; the declared one, never
	// uploaded, counts nothing after its URL expired.
	time.Sleep(400 * time.Millisecond)
	if _, err := r.Upload(ctx, p1, "", "", 600, ""); err != nil {
		t.Errorf("upload after settling: %v", err)
	}
	if n, _ := st.ContextBytes(ctx, "p1", time.Now()); n != 610 {
		t.Errorf("p1 charged %d bytes, want 610 (10 stored + 600 declared)", n)
	}
	if c, _ := st.GetContext(ctx, declared.ContextKey); !c.Settled || c.Charged != 0 {
		t.Errorf("a context never uploaded, its URL expired: %+v", c)
	}
}

// Concurrent undeclared uploads never reserve more than the quota.
func TestUploadQuotaConcurrent(t *testing.T) {
	ctx := context.Background()
	r, st, p1, _ := quotaRunner(t, Config{MaxContextBytesPerProject: 1000, Archive: archive.Limits{CompressedBytes: 300}})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var total int64
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if u, err := r.Upload(ctx, p1, "", "", 0, ""); err == nil {
				mu.Lock()
				total += u.MaxSize
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if total != 1000 {
		t.Errorf("URLs of concurrent uploads accept %d bytes in all; want the quota, 1000", total)
	}
	if n, _ := st.ContextBytes(ctx, "p1", time.Now()); n != 1000 {
		t.Errorf("charged %d, want 1000", n)
	}
}

func tarGzOf(t *testing.T, name, body string) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg})
	tw.Write([]byte(body))
	tw.Close()
	zw.Close()
	return buf.Bytes()
}

// A context uploaded without a digest is pinned to what its first build
// read: content substituted afterwards (a storage that let a second upload
// through) fails the rebuild, naming both digests.
func TestContextPinnedToFirstBuild(t *testing.T) {
	ctx := context.Background()
	r, st, p1, _ := quotaRunner(t, Config{})
	up, err := r.Upload(ctx, p1, "", "", 0, "")
	if err != nil {
		t.Fatal(err)
	}
	c, _ := st.GetContext(ctx, up.ContextKey)
	first, second := tarGzOf(t, "Dockerfile", "FROM scratch\n"), tarGzOf(t, "Dockerfile", "FROM evil\n")
	if err := r.blobs.Put(ctx, c.BlobKey, bytes.NewReader(first), int64(len(first))); err != nil {
		t.Fatal(err)
	}
	b := build.Build{ID: "b1", ProjectID: "p1"}
	spec := Spec{ContextKey: up.ContextKey}
	var work string
	fetch := func() error {
		work = t.TempDir()
		_, err := r.fetchContext(ctx, b, spec, work, filepath.Join(work, "context"))
		return err
	}
	if err := fetch(); err != nil {
		t.Fatalf("first build's fetch: %v", err)
	}
	c, _ = st.GetContext(ctx, up.ContextKey)
	if c.SHA256 != sha256Hex(first) || !c.Settled || c.Charged != int64(len(first)) {
		t.Errorf("after the first build: %+v; want pinned to sha256 %s and settled", c, sha256Hex(first))
	}
	if err := fetch(); err != nil {
		t.Errorf("a rebuild of the same bytes: %v", err)
	}
	if err := r.blobs.Put(ctx, c.BlobKey, bytes.NewReader(second), int64(len(second))); err != nil {
		t.Fatal(err)
	}
	err = fetch()
	if !errdefs.IsInvalid(err) || !strings.Contains(err.Error(), "replaced") || !strings.Contains(err.Error(), sha256Hex(first)) || !strings.Contains(err.Error(), sha256Hex(second)) {
		t.Errorf("a rebuild of substituted content: %v; want it refused naming both digests", err)
	}
	if _, err := os.Stat(filepath.Join(work, "context")); err == nil {
		t.Error("substituted content was extracted")
	}
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// slowCreates is a store whose build writes take a while, as on a busy
// disk: long enough for concurrent CreateBuilds to overlap.
type slowCreates struct{ *store.SQLite }

func (s slowCreates) CreateBuild(ctx context.Context, b build.Build) error {
	time.Sleep(20 * time.Millisecond)
	return s.SQLite.CreateBuild(ctx, b)
}

// Concurrent CreateBuilds cannot take a project past its queue bound: each
// takes its slot under the lock before the build is written.
func TestQueueBoundConcurrent(t *testing.T) {
	ctx := context.Background()
	st, blobs, dir := testStores(t)
	st.CreateOrganization(ctx, project.Organization{ID: "o1", Name: "o1"})
	st.CreateProject(ctx, project.Project{ID: "p1", OrgID: "o1", Name: "p1"})
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	slow := slowCreates{st}
	r, err := New(slow, blobs, build.NewService(slow, nil, nil, build.Config{}, logger), &project.Service{Store: st},
		Config{MaxQueuedPerProject: 5, MaxPerProject: 1, RegistryHost: func() string { return "127.0.0.1:1" },
			WorkDir: filepath.Join(dir, "work"), SecretsKey: []byte(strings.Repeat("k", 32)), Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	p1 := auth.Principal{TokenID: "t1", Kind: auth.TokenProject, OrgID: "o1", ProjectID: "p1"}
	r.mu.Lock()
	r.perProject["p1"] = 1 // p1 at its running limit: what is queued stays queued
	r.mu.Unlock()
	proj, err := st.GetProject(ctx, "p1")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var ok, refused int
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := r.queue(ctx, p1, proj, Spec{GitURL: "https://git.example.com/org/app.git", Dockerfile: "Dockerfile", Platforms: []string{"linux/amd64"}}, nil)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				ok++
			case errors.Is(err, errdefs.ErrExhausted):
				refused++
			default:
				t.Errorf("queue: %v", err)
			}
		}()
	}
	wg.Wait()
	if ok != 5 || refused != 15 {
		t.Errorf("%d queued, %d refused; want 5 and 15", ok, refused)
	}
}
