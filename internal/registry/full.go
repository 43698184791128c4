package registry

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"path"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
)

// Registry storage that fills up. distribution's answers to a full disk
// are wrong for a client: a PATCH whose data could not be flushed is
// answered 202 (its writer's Close error is dropped), so the client's
// next request fails with "invalid content range"; other writes fail with
// an "unknown error" whose detail is the storage path; and the partial
// upload stays until the collector's grace has passed, keeping the disk
// full. kiln watches every write of the storage for "no space left"
// (fullDriver), and a request that hit it (fullRequest) is answered 507
// "registry storage full" whatever distribution answered, with the upload
// sessions it wrote to removed at once.

// errStorageFull is the answer to a request whose write found no space.
var errStorageFull = newOCIError(http.StatusInsufficientStorage, "UNKNOWN",
	"registry storage full: kiln's registry has no space left, and this upload was discarded; push again once the operator has freed space")

// noSpace reports a write refused for lack of space (a full disk, or the
// owner's quota). distribution's drivers wrap errors in a
// storagedriver.Error, which does not unwrap.
func noSpace(err error) bool {
	for err != nil {
		if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
			return true
		}
		var de storagedriver.Error
		var dep *storagedriver.Error
		switch {
		case errors.As(err, &de):
			err = de.Detail
		case errors.As(err, &dep):
			err = dep.Detail
		default:
			return false
		}
	}
	return false
}

// fullRequest records what one request wrote: the upload sessions, and
// whether a write found no space.
type fullRequest struct {
	mu      sync.Mutex
	hit     bool
	uploads map[string]bool // upload session directories written to
	bodyErr error           // reading the request body failed (not EOF)
	writers []*fullWriter   // files the request opened for writing
}

// closeLeftovers closes the files the request opened and did not close.
// distribution skips its writer's Close when saving the upload's hash
// state fails (as it does when a concurrent request removed the upload),
// which would hold the file open for the life of the process.
func (fr *fullRequest) closeLeftovers() (n int) {
	fr.mu.Lock()
	writers := fr.writers
	fr.writers = nil
	fr.mu.Unlock()
	for _, w := range writers {
		if !w.closed.Load() {
			_ = w.FileWriter.Close()
			n++
		}
	}
	return n
}

type fullRequestKey struct{}

func withFullRequest(ctx context.Context) (context.Context, *fullRequest) {
	fr := &fullRequest{uploads: map[string]bool{}}
	return context.WithValue(ctx, fullRequestKey{}, fr), fr
}

func (fr *fullRequest) full() bool {
	fr.mu.Lock()
	defer fr.mu.Unlock()
	return fr.hit
}

// note records a write of ctx's request to storage path p, and whether
// err says no space.
func (d fullDriver) note(ctx context.Context, p string, err error) {
	fr, ok := ctx.Value(fullRequestKey{}).(*fullRequest)
	if !ok {
		return
	}
	fr.mu.Lock()
	defer fr.mu.Unlock()
	if dir := uploadDir(p); dir != "" {
		fr.uploads[dir] = true
	}
	if err != nil && noSpace(err) {
		fr.hit = true
	}
}

// uploadDir is the upload session directory p lies in
// (…/repositories/<name>/_uploads/<id>), or "".
func uploadDir(p string) string {
	if !strings.HasPrefix(p, reposRoot+"/") {
		return ""
	}
	i := strings.Index(p, "/_uploads/")
	if i < 0 {
		return ""
	}
	id, _, _ := strings.Cut(p[i+len("/_uploads/"):], "/")
	if id == "" {
		return ""
	}
	return p[:i] + "/_uploads/" + id
}

// fullDriver is the storage driver with its writes watched for "no space
// left" (note). A PutContent that failed so also removes its temporary
// file, which distribution's filesystem driver leaves behind.
type fullDriver struct {
	storagedriver.StorageDriver
}

func (d fullDriver) PutContent(ctx context.Context, p string, content []byte) error {
	err := d.StorageDriver.PutContent(ctx, p, content)
	if err != nil && noSpace(err) {
		d.note(ctx, p, err)
		d.removeTemps(context.WithoutCancel(ctx), p)
	}
	return err
}

// removeTemps deletes the "<p>.<uuid>.tmp" files a failed PutContent of p
// left.
func (d fullDriver) removeTemps(ctx context.Context, p string) {
	entries, err := d.StorageDriver.List(ctx, path.Dir(p))
	if err != nil {
		return
	}
	prefix := path.Base(p) + "."
	for _, e := range entries {
		if b := path.Base(e); strings.HasPrefix(b, prefix) && strings.HasSuffix(b, ".tmp") {
			_ = d.StorageDriver.Delete(ctx, e)
		}
	}
}

func (d fullDriver) Writer(ctx context.Context, p string, appending bool) (storagedriver.FileWriter, error) {
	w, err := d.StorageDriver.Writer(ctx, p, appending)
	d.note(ctx, p, err)
	if err != nil {
		return nil, err
	}
	fw := &fullWriter{FileWriter: w, d: d, ctx: ctx, path: p}
	if fr, ok := ctx.Value(fullRequestKey{}).(*fullRequest); ok {
		fr.mu.Lock()
		fr.writers = append(fr.writers, fw)
		fr.mu.Unlock()
	}
	return fw, nil
}

func (d fullDriver) Move(ctx context.Context, src, dst string) error {
	err := d.StorageDriver.Move(ctx, src, dst)
	d.note(ctx, dst, err)
	return err
}

// fullWriter watches one file's writes; ctx is the request that opened it.
type fullWriter struct {
	storagedriver.FileWriter
	d      fullDriver
	ctx    context.Context
	path   string
	closed atomic.Bool // Close or Cancel was called
}

func (w *fullWriter) Write(p []byte) (int, error) {
	n, err := w.FileWriter.Write(p)
	w.d.note(w.ctx, w.path, err)
	return n, err
}

func (w *fullWriter) Close() error {
	w.closed.Store(true)
	err := w.FileWriter.Close()
	w.d.note(w.ctx, w.path, err)
	return err
}

func (w *fullWriter) Cancel(ctx context.Context) error {
	w.closed.Store(true)
	return w.FileWriter.Cancel(ctx)
}

func (w *fullWriter) Commit(ctx context.Context) error {
	err := w.FileWriter.Commit(ctx)
	w.d.note(w.ctx, w.path, err)
	return err
}

// fullResponse stands between distribution and the client. Once a write
// of the request found no space, whatever distribution answers is dropped
// for errStorageFull (every write of a request comes before its answer, so
// the switch is made before anything is sent). A server error of
// distribution's own is answered without its detail, which may name
// storage paths (kept for the log: logged).
type fullResponse struct {
	http.ResponseWriter
	req      *fullRequest
	replaced bool // kiln's answer was sent; distribution's is dropped
	answered bool // distribution's answer went out
	logged   bytes.Buffer
	status   int // distribution's status, when replaced
}

func (w *fullResponse) WriteHeader(code int) {
	if w.replaced || w.answered {
		return
	}
	full := w.req.full()
	if full || code >= 500 {
		w.replaced, w.status = true, code
		h := w.Header()
		for _, k := range []string{"Location", "Range", "Docker-Upload-UUID", "Docker-Content-Digest", "Content-Length"} {
			h.Del(k)
		}
		if full {
			errStorageFull.write(w.ResponseWriter)
		} else {
			// Its status stays (a 503 is retried where a 500 is not).
			newOCIError(code, errInternal.code, errInternal.message).write(w.ResponseWriter)
		}
		return
	}
	w.answered = true
	w.ResponseWriter.WriteHeader(code)
}

func (w *fullResponse) Write(p []byte) (int, error) {
	if !w.replaced && !w.answered {
		w.WriteHeader(http.StatusOK)
	}
	if w.replaced {
		if w.logged.Len() < 4096 {
			w.logged.Write(p[:min(len(p), 4096-w.logged.Len())])
		}
		return len(p), nil
	}
	return w.ResponseWriter.Write(p)
}

func (w *fullResponse) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// errInternal answers a server error without its internals.
var errInternal = newOCIError(http.StatusInternalServerError, "UNKNOWN", "internal error; see the server log")

// serveWatched serves a request through distribution with its
// writes watched. A request that found the storage full is answered
// errStorageFull. The upload sessions it wrote to are removed at once when
// it found the storage full or its client went away mid-body: their partial
// data is what fills the disk, and clients (BuildKit, Docker) start a
// failed blob over rather than resume it.
func (r *Registry) serveWatched(w http.ResponseWriter, req *http.Request) {
	ctx, fr := withFullRequest(req.Context())
	fw := &fullResponse{ResponseWriter: w, req: fr}
	req = req.WithContext(ctx)
	if req.Body != nil && req.Body != http.NoBody {
		req.Body = &watchedBody{ReadCloser: req.Body, fr: fr}
	}
	// distribution Adds the API version header to every answer; kiln set
	// it already (ServeHTTP), and it goes out once.
	w.Header().Del(apiVersionHeader)
	r.app.ServeHTTP(fw, req)
	if n := fr.closeLeftovers(); n > 0 {
		r.log.DebugContext(ctx, "closed files distribution left open", "method", req.Method, "files", n)
	}
	fr.mu.Lock()
	full, abandoned := fr.hit, fr.bodyErr != nil || ctx.Err() != nil
	dirs := make([]string, 0, len(fr.uploads))
	for d := range fr.uploads {
		dirs = append(dirs, d)
	}
	fr.mu.Unlock()
	if full && !fw.replaced && !fw.answered {
		// distribution wrote nothing (net/http would answer 200).
		fw.WriteHeader(http.StatusInsufficientStorage)
	}
	if fw.replaced && !full {
		r.log.ErrorContext(ctx, "registry request failed", "method", req.Method, "status", fw.status, "answer", fw.logged.String())
	}
	if !full && !abandoned {
		return
	}
	cctx := context.WithoutCancel(ctx)
	for _, d := range dirs {
		if err := r.driver.Delete(cctx, d); err != nil && !isNotFound(err) {
			r.log.ErrorContext(ctx, "remove a failed upload", "upload", path.Base(d), "err", err)
		}
	}
	if full {
		r.log.WarnContext(ctx, "registry storage full: a push was refused and its upload removed; free space in the registry's storage",
			"method", req.Method, "uploads_removed", len(dirs))
	} else if len(dirs) > 0 {
		r.log.InfoContext(ctx, "upload abandoned mid-body; removed", "method", req.Method, "uploads_removed", len(dirs))
	}
}

// watchedBody notes a request body that failed before its end (the client
// went away, or stopped sending).
type watchedBody struct {
	io.ReadCloser
	fr *fullRequest
}

func (b *watchedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && err != io.EOF {
		b.fr.mu.Lock()
		b.fr.bodyErr = err
		b.fr.mu.Unlock()
	}
	return n, err
}
