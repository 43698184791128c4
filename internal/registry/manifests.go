package registry

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"strconv"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/store"
)

// maxManifestSize is the largest manifest accepted (the spec's 4 MiB).
const maxManifestSize = 4 << 20

// manifestInfo is what kiln reads from a manifest it indexes.
type manifestInfo struct {
	mediaType    string
	artifactType string // as the referrers API reports it
	subject      string // a valid digest, or ""
	annotations  map[string]string
	// blobs are the config and layers (image manifests); children the
	// manifests of an index. Each a valid digest.
	blobs    []v1.Descriptor
	children []v1.Descriptor
}

// parseManifest reads an image manifest or index. contentType is the
// request's Content-Type (distribution's choice of schema), falling back to
// the document's mediaType. Invalid documents give zero info (distribution
// refuses them anyway).
func parseManifest(body []byte, contentType string) manifestInfo {
	var doc struct {
		MediaType    string            `json:"mediaType"`
		ArtifactType string            `json:"artifactType"`
		Config       *v1.Descriptor    `json:"config"`
		Layers       []v1.Descriptor   `json:"layers"`
		Manifests    []v1.Descriptor   `json:"manifests"`
		Subject      *v1.Descriptor    `json:"subject"`
		Annotations  map[string]string `json:"annotations"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return manifestInfo{}
	}
	info := manifestInfo{mediaType: doc.MediaType, artifactType: doc.ArtifactType, annotations: doc.Annotations}
	if mt, _, err := mime.ParseMediaType(contentType); err == nil && mt != "" {
		info.mediaType = mt
	}
	valid := func(d v1.Descriptor) bool { return d.Digest.Validate() == nil }
	if doc.Subject != nil && valid(*doc.Subject) {
		info.subject = doc.Subject.Digest.String()
	}
	if doc.Config != nil {
		if info.artifactType == "" {
			info.artifactType = doc.Config.MediaType
		}
		if valid(*doc.Config) {
			info.blobs = append(info.blobs, *doc.Config)
		}
	}
	for _, l := range doc.Layers {
		if valid(l) {
			info.blobs = append(info.blobs, l)
		}
	}
	for _, m := range doc.Manifests {
		if valid(m) {
			info.children = append(info.children, m)
		}
	}
	return info
}

// putManifest serves a manifest PUT: bounded read, pins on everything the
// manifest names (so the collector cannot remove them under the push),
// distribution's validation and storage, then kiln's index and the
// OCI-Subject header.
func (r *Registry) putManifest(w http.ResponseWriter, req *http.Request, rt route) {
	ctx := req.Context()
	body, err := io.ReadAll(io.LimitReader(req.Body, maxManifestSize+1))
	if err != nil {
		newOCIError(http.StatusBadRequest, "MANIFEST_INVALID", "reading the manifest failed").write(w)
		return
	}
	if len(body) > maxManifestSize {
		newOCIError(http.StatusRequestEntityTooLarge, "MANIFEST_INVALID", "manifest larger than 4 MiB").write(w)
		return
	}
	info := parseManifest(body, req.Header.Get("Content-Type"))
	keys := []string{digestKey(digest.FromBytes(body).String())}
	if rt.dgst != "" {
		keys = append(keys, digestKey(rt.dgst.String()))
	} else {
		keys = append(keys, tagKey(rt.name, rt.ref))
	}
	for _, d := range append(info.blobs, info.children...) {
		keys = append(keys, digestKey(d.Digest.String()))
	}
	end := r.pins.begin(keys...)
	defer end()

	req.Body = io.NopCloser(bytes.NewReader(body))
	req.ContentLength = int64(len(body))
	rec := newRecorder()
	r.serveWatched(rec, req)
	if rec.status == http.StatusCreated {
		dgst := rec.Header().Get("Docker-Content-Digest")
		if _, err := digest.Parse(dgst); err == nil {
			tag := ""
			if rt.dgst == "" {
				tag = rt.ref
			}
			if err := r.index(ctx, rt.name, dgst, tag, body, info, r.cfg.Now()); err != nil {
				// The manifest is stored; the collector indexes what the
				// store misses on its next run.
				r.log.ErrorContext(ctx, "index pushed manifest", "repository", rt.name, "digest", dgst, "err", err)
			}
		}
		if info.subject != "" {
			rec.Header().Set("OCI-Subject", info.subject)
		}
	}
	rec.copyTo(w)
}

// index records a stored manifest (and tag) in the store.
func (r *Registry) index(ctx context.Context, repo, dgst, tag string, body []byte, info manifestInfo, at time.Time) error {
	m := store.RegistryManifest{Repo: repo, Digest: dgst, ProjectID: projectOf(repo), MediaType: info.mediaType,
		ArtifactType: info.artifactType, Subject: info.subject, Size: int64(len(body)), Annotations: info.annotations, PushedAt: at}
	m.TotalSize = m.Size
	seen := map[digest.Digest]bool{}
	for _, b := range info.blobs {
		if !seen[b.Digest] && b.Size > 0 {
			seen[b.Digest] = true
			m.TotalSize += b.Size
		}
	}
	for _, c := range info.children {
		if seen[c.Digest] {
			continue
		}
		seen[c.Digest] = true
		child, err := r.cfg.Store.GetRegistryManifest(ctx, repo, c.Digest.String())
		switch {
		case err == nil:
			m.TotalSize += child.TotalSize
		case errdefs.IsNotFound(err):
			m.TotalSize += max(c.Size, 0)
		default:
			return err
		}
	}
	return r.cfg.Store.PutRegistryManifest(ctx, m, tag)
}

// deleteManifest serves a manifest DELETE (by digest: the manifest and its
// tags; by tag: the tag) and drops what it removed from the index, which
// removes a deleted referrer from its subject's referrers.
func (r *Registry) deleteManifest(w http.ResponseWriter, req *http.Request, rt route) {
	rec := newRecorder()
	r.serveWatched(rec, req)
	if rec.status == http.StatusAccepted {
		var err error
		if rt.dgst != "" {
			err = r.cfg.Store.DeleteRegistryManifest(req.Context(), rt.name, rt.dgst.String())
		} else {
			err = r.cfg.Store.DeleteRegistryTag(req.Context(), rt.name, rt.ref)
		}
		if err != nil {
			r.log.ErrorContext(req.Context(), "unindex deleted manifest", "repository", rt.name, "reference", rt.ref, "err", err)
		}
	}
	rec.copyTo(w)
}

// recorder buffers a small response (manifest PUT and DELETE answers) so
// kiln can index and add headers before it goes out.
type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func newRecorder() *recorder { return &recorder{header: http.Header{}} }

func (r *recorder) Header() http.Header { return r.header }

func (r *recorder) WriteHeader(status int) {
	if r.status == 0 {
		r.status = status
	}
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	if r.body.Len()+len(b) > 1<<20 {
		return 0, errors.New("response too large to buffer")
	}
	return r.body.Write(b)
}

func (r *recorder) copyTo(w http.ResponseWriter) {
	for k, v := range r.header {
		w.Header()[k] = v
	}
	if r.status == 0 {
		r.status = http.StatusOK
	}
	if r.body.Len() > 0 {
		w.Header().Set("Content-Length", strconv.Itoa(r.body.Len()))
	}
	w.WriteHeader(r.status)
	w.Write(r.body.Bytes())
}
