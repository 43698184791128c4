package metrics

import (
	"io"
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// Registry content kinds, the kind label of the registry byte counters.
const (
	kindBlob     = "blob"
	kindManifest = "manifest"
)

// registryKind is what an OCI distribution path addresses: "blob" for
// /v2/<name>/blobs/… (blobs and uploads), "manifest" for
// /v2/<name>/manifests/<ref>, "" for the rest (catalog, tags, the base).
// A repository name may itself contain "blobs" or "manifests": the last
// of the two segments decides, as the routes end with them.
func registryKind(path string) string {
	b, m := strings.LastIndex(path, "/blobs/"), strings.LastIndex(path, "/manifests/")
	switch {
	case b < 0 && m < 0:
		return ""
	case b > m:
		return kindBlob
	default:
		return kindManifest
	}
}

// Registry wraps kiln's registry handler (/v2/) to count the bytes it
// receives in pushes (request bodies of PUT, PATCH and POST: blob chunks,
// monolithic uploads, manifests) and sends in pulls (response bodies of
// successful GETs of blobs and manifests). Bytes count as the handler
// reads or writes them: a refused push counts what was read of it.
func (m *Metrics) Registry(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		kind := registryKind(r.URL.Path)
		if kind == "" {
			next.ServeHTTP(w, r)
			return
		}
		switch r.Method {
		case http.MethodPut, http.MethodPatch, http.MethodPost:
			if r.Body != nil && r.Body != http.NoBody {
				r.Body = &countingBody{ReadCloser: r.Body, c: m.registryPushed.WithLabelValues(kind)}
			}
			next.ServeHTTP(w, r)
		case http.MethodGet:
			next.ServeHTTP(&countingWriter{ResponseWriter: w, c: m.registryPulled.WithLabelValues(kind)}, r)
		default:
			next.ServeHTTP(w, r)
		}
	})
}

// Uploads wraps the handler of source build contexts' upload URLs
// (blob.Local's, at /blobs/) to count the bytes uploaded.
func (m *Metrics) Uploads(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut && r.Body != nil && r.Body != http.NoBody {
			r.Body = &countingBody{ReadCloser: r.Body, c: m.uploadBytes}
		}
		next.ServeHTTP(w, r)
	})
}

// countingBody adds what is read of a request body to c.
type countingBody struct {
	io.ReadCloser
	c prometheus.Counter
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		b.c.Add(float64(n))
	}
	return n, err
}

// countingWriter adds the bytes of a successful response's body to c. It
// keeps the writer's optional powers: Flush, and ReadFrom (sendfile for
// blobs served from disk); http.ResponseController reaches the rest
// through Unwrap.
type countingWriter struct {
	http.ResponseWriter
	c      prometheus.Counter
	status int
}

func (w *countingWriter) WriteHeader(code int) {
	if w.status == 0 && code >= 200 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *countingWriter) counts() bool {
	if w.status == 0 {
		w.status = http.StatusOK // the first Write sends 200
	}
	return w.status < 300
}

func (w *countingWriter) Write(p []byte) (int, error) {
	count := w.counts()
	n, err := w.ResponseWriter.Write(p)
	if count && n > 0 {
		w.c.Add(float64(n))
	}
	return n, err
}

func (w *countingWriter) ReadFrom(r io.Reader) (int64, error) {
	count := w.counts()
	var n int64
	var err error
	if rf, ok := w.ResponseWriter.(io.ReaderFrom); ok {
		n, err = rf.ReadFrom(r)
	} else {
		n, err = io.Copy(struct{ io.Writer }{w.ResponseWriter}, r)
	}
	if count && n > 0 {
		w.c.Add(float64(n))
	}
	return n, err
}

func (w *countingWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *countingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
