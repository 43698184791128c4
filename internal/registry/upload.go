package registry

import (
	"fmt"
	"net/http"
	"net/url"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// errBodyWithoutDigest answers an upload start that carries a body but no
// digest: the spec's single-request upload names its blob's digest.
var errBodyWithoutDigest = newOCIError(http.StatusBadRequest, "DIGEST_INVALID",
	"a POST that carries a blob must name its digest: POST /v2/<name>/blobs/uploads/?digest=<digest>; without one, POST with no body opens an upload session")

// monolithicUpload serves the spec's single-request upload: POST
// /v2/<name>/blobs/uploads/?digest=<d> with the whole blob as the body.
// distribution only opens sessions on POST, so kiln runs the two requests
// a client would otherwise send through it — open a session, then PUT the
// body to it with the digest — and answers the PUT's answer: 201 with the
// blob's Location and Docker-Content-Digest, or 400 DIGEST_INVALID when
// the body does not match the digest. Both go through serveWatched (a full
// disk is 507, an abandoned body removes the session), and a session whose
// PUT did not store the blob is removed at once: a failed single-request
// upload leaves nothing behind.
func (r *Registry) monolithicUpload(w http.ResponseWriter, req *http.Request, rt route, d string) {
	ctx := req.Context()
	dgst, err := digest.Parse(d)
	if err != nil {
		newOCIError(http.StatusBadRequest, "DIGEST_INVALID", "invalid digest "+quote(d)+" in the digest query parameter: want <algorithm>:<hex>, e.g. sha256:<64 hex digits>").write(w)
		return
	}
	if oerr := r.roomFor(req); oerr != nil {
		oerr.write(w)
		return
	}
	endBlob := r.pins.begin(digestKey(dgst.String()))
	defer endBlob()

	open := req.Clone(ctx)
	q := open.URL.Query()
	q.Del("digest")
	open.URL.RawQuery = q.Encode()
	open.RequestURI = open.URL.RequestURI()
	open.Body, open.ContentLength = http.NoBody, 0
	opened := newRecorder()
	r.serveWatched(opened, open)
	id := opened.Header().Get("Docker-Upload-UUID")
	loc, err := url.Parse(opened.Header().Get("Location"))
	if opened.status != http.StatusAccepted || id == "" || err != nil || !uploadIDPattern.MatchString(id) {
		opened.copyTo(w)
		return
	}
	endUpload := r.pins.begin(uploadKey(rt.name, id))
	defer endUpload()

	put := req.Clone(ctx)
	put.Method = http.MethodPut
	pq := loc.Query()
	pq.Set("digest", dgst.String())
	put.URL = &url.URL{Path: loc.Path, RawQuery: pq.Encode()}
	put.RequestURI = put.URL.RequestURI()
	put.Header.Del("Content-Range")
	stored := newRecorder()
	r.serveWatched(answerDigest(stored, dgst.String()), put)
	if stored.status != http.StatusCreated {
		if err := r.driver.Delete(ctx, repoPath(rt.name, "_uploads", id)); err != nil && !isNotFound(err) {
			r.log.ErrorContext(ctx, "remove a failed single-request upload", "upload", id, "err", err)
		}
	}
	stored.copyTo(w)
}

// roomFor refuses, before its body is read, a single-request upload whose
// Content-Length is more than local storage has free: 507, as when a write
// finds the disk full (full.go), without first filling it (no session
// exists yet to discard). Requests on a session are left to full.go, which
// discards the session with the refusal. S3 storage has no such bound to
// check.
func (r *Registry) roomFor(req *http.Request) *ociError {
	if req.ContentLength <= 0 || r.cfg.S3 != nil && r.cfg.S3.Bucket != "" {
		return nil
	}
	var st unix.Statfs_t
	if err := unix.Statfs(r.cfg.Dir, &st); err != nil {
		return nil // the writes themselves will tell
	}
	free := int64(st.Bavail) * st.Bsize
	if req.ContentLength <= free {
		return nil
	}
	return newOCIError(http.StatusInsufficientStorage, errStorageFull.code,
		fmt.Sprintf("registry storage full: this upload of %d bytes is more than kiln's registry has free; it was refused before any of it was stored", req.ContentLength))
}

// answerDigest makes the Docker-Content-Digest of a successful blob answer
// the digest the client named, d, when that is not a sha256 digest.
// distribution keeps content by its sha256 digest and links another
// algorithm's digest to it once an upload's commit has hashed the content
// with that algorithm, but answers with the sha256 one, which a client
// that addressed the blob by sha512 rejects. A mount links only the sha256
// digest into its target, so its answer is left naming that. d that does
// not parse, or is sha256, leaves w as it is.
func answerDigest(w http.ResponseWriter, d string) http.ResponseWriter {
	dgst, err := digest.Parse(d)
	if err != nil || dgst.Algorithm() == digest.Canonical {
		return w
	}
	return &digestAnswer{ResponseWriter: w, want: dgst.String()}
}

type digestAnswer struct {
	http.ResponseWriter
	want    string
	written bool
}

func (w *digestAnswer) WriteHeader(code int) {
	if !w.written {
		w.written = true
		if h := w.Header(); code/100 == 2 && h.Get("Docker-Content-Digest") != "" {
			h.Set("Docker-Content-Digest", w.want)
		}
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *digestAnswer) Write(p []byte) (int, error) {
	if !w.written {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriter.Write(p)
}

func (w *digestAnswer) Unwrap() http.ResponseWriter { return w.ResponseWriter }
