package blob_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/blob"
	"github.com/kiln-dev/kiln/internal/blob/blobtest"
	"github.com/kiln-dev/kiln/internal/errdefs"
)

// localEnv is a Local store served the way kiln serves it: its Handler on a
// loopback HTTP server, with a clock the test can move.
type localEnv struct {
	store *blob.Local
	root  string
	srv   *httptest.Server
	now   atomic.Pointer[time.Time] // nil: the real clock
}

func newLocal(t *testing.T) *localEnv {
	t.Helper()
	e := &localEnv{root: filepath.Join(t.TempDir(), "blobs")}
	mux := http.NewServeMux()
	e.srv = httptest.NewServer(mux)
	t.Cleanup(e.srv.Close)
	secret, err := blob.LoadOrCreateSecret(filepath.Join(t.TempDir(), "secret"))
	if err != nil {
		t.Fatal(err)
	}
	e.store, err = blob.NewLocal(blob.LocalConfig{
		Root:    e.root,
		Secret:  secret,
		BaseURL: func() string { return e.srv.URL },
		Now: func() time.Time {
			if p := e.now.Load(); p != nil {
				return *p
			}
			return time.Now()
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	mux.Handle("/blobs/", e.store.Handler())
	return e
}

func TestLocalConformance(t *testing.T) {
	blobtest.Run(t, func(t *testing.T) blob.Store {
		e := newLocal(t)
		t.Cleanup(func() { e.assertNoTemps(t) })
		return e.store
	})
}

// assertNoTemps checks that no upload left a temp file behind.
func (e *localEnv) assertNoTemps(t *testing.T) {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(e.root, "tmp"))
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range entries {
		t.Errorf("temp file %s left behind", x.Name())
	}
}

// send makes a request and returns its response with the body read.
func send(t *testing.T, method, rawURL string, body io.Reader) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, rawURL, body)
	if err != nil {
		t.Fatal(err)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, rawURL, err)
	}
	defer res.Body.Close()
	msg, _ := io.ReadAll(res.Body)
	return res, string(msg)
}

// chunked hides a body's length, so the request has no Content-Length and
// the handler must count while streaming.
func chunked(b []byte) io.Reader { return io.MultiReader(bytes.NewReader(b)) }

func wantStatus(t *testing.T, what string, res *http.Response, msg string, status int, contains ...string) {
	t.Helper()
	if res.StatusCode != status {
		t.Fatalf("%s: status %d (%s), want %d", what, res.StatusCode, strings.TrimSpace(msg), status)
	}
	for _, c := range contains {
		if !strings.Contains(msg, c) {
			t.Errorf("%s: message %q does not mention %q", what, strings.TrimSpace(msg), c)
		}
	}
}

func missing(t *testing.T, s blob.Store, key string) {
	t.Helper()
	if _, err := s.Stat(context.Background(), key); !errdefs.IsNotFound(err) {
		t.Fatalf("Stat(%q) = %v, want ErrNotFound", key, err)
	}
}

func presign(t *testing.T, s blob.Store, key string, o blob.PutOptions) blob.Presigned {
	t.Helper()
	p, err := s.PresignPut(context.Background(), key, o)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLocalMaxSize(t *testing.T) {
	e := newLocal(t)
	p := presign(t, e.store, "big", blob.PutOptions{MaxSize: 100})
	body := bytes.Repeat([]byte("x"), 101)

	res, msg := send(t, "PUT", p.URL, bytes.NewReader(body))
	wantStatus(t, "Content-Length over the limit", res, msg, http.StatusRequestEntityTooLarge, "101", "100")
	res, msg = send(t, "PUT", p.URL, chunked(body))
	wantStatus(t, "streamed body over the limit", res, msg, http.StatusRequestEntityTooLarge, "100")
	missing(t, e.store, "big")

	res, msg = send(t, "PUT", p.URL, chunked(body[:100]))
	wantStatus(t, "streamed body at the limit", res, msg, http.StatusOK)
	e.assertNoTemps(t)
}

func TestLocalDeclaredSize(t *testing.T) {
	e := newLocal(t)
	p := presign(t, e.store, "sized", blob.PutOptions{Size: 10, MaxSize: 100})
	res, msg := send(t, "PUT", p.URL, strings.NewReader("0123456789x"))
	wantStatus(t, "Content-Length over the declared size", res, msg, http.StatusBadRequest, "11", "10")
	res, msg = send(t, "PUT", p.URL, chunked([]byte("0123456789x")))
	wantStatus(t, "streamed body over the declared size", res, msg, http.StatusBadRequest, "10")
	res, msg = send(t, "PUT", p.URL, chunked([]byte("012345678")))
	wantStatus(t, "streamed body under the declared size", res, msg, http.StatusBadRequest, "9", "10")
	missing(t, e.store, "sized")
	res, msg = send(t, "PUT", p.URL, chunked([]byte("0123456789")))
	wantStatus(t, "streamed body of the declared size", res, msg, http.StatusOK)
	e.assertNoTemps(t)
}

func TestLocalSHA256(t *testing.T) {
	e := newLocal(t)
	good, bad := []byte("the real context"), []byte("a forged context")
	sum := sha256.Sum256(good)
	want := hex.EncodeToString(sum[:])
	badSum := sha256.Sum256(bad)
	p := presign(t, e.store, "ctx", blob.PutOptions{SHA256: strings.ToUpper(want)})

	res, msg := send(t, "PUT", p.URL, bytes.NewReader(bad))
	wantStatus(t, "wrong digest", res, msg, http.StatusBadRequest, want, hex.EncodeToString(badSum[:]))
	missing(t, e.store, "ctx")
	e.assertNoTemps(t)

	res, msg = send(t, "PUT", p.URL, bytes.NewReader(good))
	wantStatus(t, "right digest", res, msg, http.StatusOK)
	if got := res.Header.Get("X-Kiln-SHA256"); got != want {
		t.Errorf("X-Kiln-SHA256 = %q, want %q", got, want)
	}
}

func TestLocalMethods(t *testing.T) {
	e := newLocal(t)
	p := presign(t, e.store, "k", blob.PutOptions{})
	for _, m := range []string{"GET", "POST", "DELETE", "HEAD", "PATCH"} {
		res, msg := send(t, m, p.URL, nil)
		wantStatus(t, m, res, msg, http.StatusMethodNotAllowed)
		if allow := res.Header.Get("Allow"); allow != "PUT" {
			t.Errorf("%s: Allow = %q, want PUT", m, allow)
		}
	}
	missing(t, e.store, "k")
}

func TestLocalRefusalMessages(t *testing.T) {
	e := newLocal(t)
	p := presign(t, e.store, "k", blob.PutOptions{TTL: time.Minute})
	u, _ := url.Parse(p.URL)

	q := u.Query()
	q.Set("sig", strings.Repeat("0", 64))
	altered := *u
	altered.RawQuery = q.Encode()
	res, msg := send(t, "PUT", altered.String(), strings.NewReader("x"))
	wantStatus(t, "altered signature", res, msg, http.StatusForbidden,
		"signature does not match: the upload URL was altered; ask for a new one with GenerateUploadURL")
	q.Del("sig")
	altered.RawQuery = q.Encode()
	res, msg = send(t, "PUT", altered.String(), strings.NewReader("x"))
	wantStatus(t, "no signature", res, msg, http.StatusForbidden, "signature does not match")

	later := time.Now().Add(2 * time.Minute)
	e.now.Store(&later)
	res, msg = send(t, "PUT", p.URL, strings.NewReader("x"))
	wantStatus(t, "expired", res, msg, http.StatusForbidden,
		"upload URL expired at "+p.ExpiresAt.UTC().Format(time.RFC3339)+"; ask for a new one")
	missing(t, e.store, "k")
}

func TestLocalExpiryBoundary(t *testing.T) {
	e := newLocal(t)
	start := time.Date(2026, 1, 2, 3, 4, 5, 600_000_000, time.UTC)
	e.now.Store(&start)
	p := presign(t, e.store, "k", blob.PutOptions{TTL: 10 * time.Second})
	if p.ExpiresAt.Before(start.Add(10 * time.Second)) {
		t.Fatalf("ExpiresAt %v is earlier than now + TTL", p.ExpiresAt)
	}
	at := p.ExpiresAt
	e.now.Store(&at)
	res, msg := send(t, "PUT", p.URL, strings.NewReader("x"))
	wantStatus(t, "at the expiry", res, msg, http.StatusOK)
	after := p.ExpiresAt.Add(time.Second)
	e.now.Store(&after)
	res, msg = send(t, "PUT", p.URL, strings.NewReader("x"))
	wantStatus(t, "after the expiry", res, msg, http.StatusForbidden, "expired")
}

func TestLocalHandlerRejectsBadKeys(t *testing.T) {
	e := newLocal(t)
	p := presign(t, e.store, "k", blob.PutOptions{})
	query := p.URL[strings.Index(p.URL, "?"):]
	// Straight to the handler: a ServeMux would clean some of these paths.
	for _, path := range []string{"/blobs/../../etc/x", "/blobs/a//b", "/blobs//abs", "/blobs/", "/blobs/a%20b", "/blobs/" + strings.Repeat("a", 513)} {
		req := httptest.NewRequest("PUT", path+query, strings.NewReader("x"))
		rec := httptest.NewRecorder()
		e.store.Handler().ServeHTTP(rec, req)
		if rec.Code != http.StatusBadRequest {
			t.Errorf("PUT %s: status %d (%s), want 400", path, rec.Code, strings.TrimSpace(rec.Body.String()))
		}
	}
	var files []string
	filepath.WalkDir(filepath.Dir(e.root), func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			files = append(files, p)
		}
		return nil
	})
	if len(files) != 0 {
		t.Errorf("files written: %q", files)
	}
}

func TestLocalFileModes(t *testing.T) {
	e := newLocal(t)
	ctx := context.Background()
	if err := e.store.Put(ctx, "a/b/put", strings.NewReader("x"), 1); err != nil {
		t.Fatal(err)
	}
	p := presign(t, e.store, "a/c/uploaded", blob.PutOptions{})
	res, msg := send(t, "PUT", p.URL, strings.NewReader("y"))
	wantStatus(t, "upload", res, msg, http.StatusOK)
	for path, want := range map[string]fs.FileMode{
		"":                     0o700,
		"objects":              0o700,
		"tmp":                  0o700,
		"objects/a/b":          0o700,
		"objects/a/b/put":      0o600,
		"objects/a/c/uploaded": 0o600,
	} {
		fi, err := os.Stat(filepath.Join(e.root, path))
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("%s: mode %04o, want %04o", path, got, want)
		}
	}
}

// A failing body leaves nothing behind: no object, no temp file, and the
// previous object intact.
func TestLocalFailedPut(t *testing.T) {
	e := newLocal(t)
	ctx := context.Background()
	if err := e.store.Put(ctx, "k", strings.NewReader("old"), 3); err != nil {
		t.Fatal(err)
	}
	broken := io.MultiReader(strings.NewReader("new data"), iotestErrReader{})
	if err := e.store.Put(ctx, "k", broken, 100); err == nil {
		t.Fatal("Put from a failing reader succeeded")
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := e.store.Put(cctx, "k", strings.NewReader("new"), 3); !errors.Is(err, context.Canceled) {
		t.Fatalf("Put with a canceled context = %v, want context.Canceled", err)
	}
	rc, _, err := e.store.Open(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(rc)
	rc.Close()
	if string(got) != "old" {
		t.Fatalf("object after failed Puts = %q, want %q", got, "old")
	}
	e.assertNoTemps(t)
}

type iotestErrReader struct{}

func (iotestErrReader) Read([]byte) (int, error) { return 0, errors.New("disk gone") }

func TestLocalKeyCollision(t *testing.T) {
	e := newLocal(t)
	ctx := context.Background()
	if err := e.store.Put(ctx, "a/b", strings.NewReader("x"), 1); err != nil {
		t.Fatal(err)
	}
	if err := e.store.Put(ctx, "a/b/c", strings.NewReader("x"), 1); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("Put(a/b/c) over object a/b = %v, want ErrFailedPrecondition", err)
	}
	if err := e.store.Put(ctx, "a", strings.NewReader("x"), 1); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("Put(a) over directory a/ = %v, want ErrFailedPrecondition", err)
	}
	missing(t, e.store, "a/b/c")
	e.assertNoTemps(t)
}

// Concurrent writers of one key: every reader sees one whole version, and
// the last rename wins.
func TestLocalConcurrentSameKey(t *testing.T) {
	e := newLocal(t)
	ctx := context.Background()
	const writers = 6
	versions := map[string]bool{}
	for i := range writers {
		versions[string(bytes.Repeat([]byte{byte('a' + i)}, 50_000+i*1000))] = true
	}
	first := strings.Repeat("0", 10)
	versions[first] = true
	if err := e.store.Put(ctx, "same", strings.NewReader(first), int64(len(first))); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	stop := make(chan struct{})
	for i := range writers {
		data := bytes.Repeat([]byte{byte('a' + i)}, 50_000+i*1000)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 5 {
				if err := e.store.Put(ctx, "same", bytes.NewReader(data), int64(len(data))); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	var readers sync.WaitGroup
	for range 2 {
		readers.Add(1)
		go func() {
			defer readers.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				rc, info, err := e.store.Open(ctx, "same")
				if err != nil {
					errs <- err
					return
				}
				got, err := io.ReadAll(rc)
				rc.Close()
				if err != nil || !versions[string(got)] || int64(len(got)) != info.Size {
					errs <- fmt.Errorf("read %d bytes (info says %d), not one whole version: %v", len(got), info.Size, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	readers.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	e.assertNoTemps(t)
}

func TestLocalRemovesStaleTemps(t *testing.T) {
	e := newLocal(t)
	tmp := filepath.Join(e.root, "tmp")
	stale, fresh := filepath.Join(tmp, "put-stale"), filepath.Join(tmp, "put-fresh")
	for _, f := range []string{stale, fresh} {
		if err := os.WriteFile(f, []byte("partial"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	old := time.Now().Add(-2 * time.Hour)
	os.Chtimes(stale, old, old)
	secret, _ := blob.LoadOrCreateSecret(filepath.Join(t.TempDir(), "s"))
	if _, err := blob.NewLocal(blob.LocalConfig{Root: e.root, Secret: secret, BaseURL: func() string { return "http://x" }}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stale); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("stale temp file kept: %v", err)
	}
	if _, err := os.Stat(fresh); err != nil {
		t.Errorf("fresh temp file (an upload in progress) removed: %v", err)
	}
}

func TestLocalCurl(t *testing.T) {
	e := newLocal(t)
	data := bytes.Repeat([]byte("curl "), 600_000) // big enough for curl to send Expect: 100-continue
	sum := sha256.Sum256(data)
	p := presign(t, e.store, "contexts/p1/curl.tar.gz", blob.PutOptions{Size: int64(len(data)), MaxSize: 10 << 20, SHA256: hex.EncodeToString(sum[:])})
	curlUpload(t, p, data)
	info, err := e.store.Stat(context.Background(), "contexts/p1/curl.tar.gz")
	if err != nil || info.Size != int64(len(data)) {
		t.Fatalf("Stat after curl upload = %+v, %v", info, err)
	}
}

func TestNewLocalConfig(t *testing.T) {
	base := func() string { return "http://127.0.0.1:1" }
	root := t.TempDir()
	for name, cfg := range map[string]blob.LocalConfig{
		"no root":      {Secret: make([]byte, 32), BaseURL: base},
		"short secret": {Root: root, Secret: make([]byte, 31), BaseURL: base},
		"no base URL":  {Root: root, Secret: make([]byte, 32)},
	} {
		if _, err := blob.NewLocal(cfg); !errdefs.IsInvalid(err) {
			t.Errorf("%s: NewLocal = %v, want ErrInvalid", name, err)
		}
	}
}

func TestLoadOrCreateSecret(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state", "upload-secret")
	a, err := blob.LoadOrCreateSecret(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(a) != 32 || bytes.Equal(a, make([]byte, 32)) {
		t.Fatalf("secret = %x, want 32 random bytes", a)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("secret file: %v, %v; want mode 0600", fi.Mode(), err)
	}
	b, err := blob.LoadOrCreateSecret(path)
	if err != nil || !bytes.Equal(a, b) {
		t.Fatalf("second load = %x, %v; want the same secret", b, err)
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Errorf("files beside the secret: %d entries, want 1", len(entries))
	}

	os.Chmod(path, 0o644)
	if _, err := blob.LoadOrCreateSecret(path); !errors.Is(err, errdefs.ErrPermission) {
		t.Errorf("world-readable secret: %v, want ErrPermission", err)
	}
	os.Chmod(path, 0o600)
	os.WriteFile(path, []byte("short"), 0o600)
	if _, err := blob.LoadOrCreateSecret(path); !errdefs.IsInvalid(err) {
		t.Errorf("short secret: %v, want ErrInvalid", err)
	}
}

// A URL signed with one secret does not work with another.
func TestLocalSecretRotation(t *testing.T) {
	e := newLocal(t)
	p := presign(t, e.store, "k", blob.PutOptions{})
	other, err := blob.NewLocal(blob.LocalConfig{Root: e.root, Secret: bytes.Repeat([]byte{7}, 32), BaseURL: func() string { return e.srv.URL }})
	if err != nil {
		t.Fatal(err)
	}
	req := httptest.NewRequest("PUT", p.URL, strings.NewReader("x"))
	rec := httptest.NewRecorder()
	other.Handler().ServeHTTP(rec, req)
	if rec.Code != http.StatusForbidden {
		t.Fatalf("URL from another secret: status %d, want 403", rec.Code)
	}
}
