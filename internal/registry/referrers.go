package registry

import (
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strconv"

	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// serveReferrers is the OCI 1.1 referrers API: an image index of the
// manifests in the repository whose subject is the digest, optionally only
// those of one artifactType (then OCI-Filters-Applied says so). An unknown
// subject, or a repository with nothing in it, has no referrers: the answer
// is an empty index, never 404.
func (r *Registry) serveReferrers(w http.ResponseWriter, req *http.Request, rt route) {
	ctx := req.Context()
	artifactType := req.URL.Query().Get("artifactType")
	refs, err := r.cfg.Store.ListRegistryReferrers(ctx, rt.name, rt.dgst.String(), artifactType)
	if err != nil {
		r.internalError(ctx, w, "list referrers", err)
		return
	}
	type descriptor struct {
		MediaType    string            `json:"mediaType"`
		Digest       string            `json:"digest"`
		Size         int64             `json:"size"`
		ArtifactType string            `json:"artifactType,omitempty"`
		Annotations  map[string]string `json:"annotations,omitempty"`
	}
	index := struct {
		SchemaVersion int          `json:"schemaVersion"`
		MediaType     string       `json:"mediaType"`
		Manifests     []descriptor `json:"manifests"`
	}{SchemaVersion: 2, MediaType: v1.MediaTypeImageIndex, Manifests: []descriptor{}}
	for _, m := range refs {
		index.Manifests = append(index.Manifests, descriptor{MediaType: m.MediaType, Digest: m.Digest, Size: m.Size,
			ArtifactType: m.ArtifactType, Annotations: m.Annotations})
	}
	w.Header().Set("Content-Type", v1.MediaTypeImageIndex)
	if artifactType != "" {
		w.Header().Set("OCI-Filters-Applied", "artifactType")
	}
	json.NewEncoder(w).Encode(index)
}

// maxCatalogPage bounds one catalog answer; more continue via Link.
const maxCatalogPage = 1000

// serveCatalog lists the repositories the caller may pull from that hold
// content (a manifest or a blob; hasContent), sorted,
// with n/last pagination and a Link header to the next page.
func (r *Registry) serveCatalog(w http.ResponseWriter, req *http.Request, c caller) {
	ctx := req.Context()
	q := req.URL.Query()
	n := maxCatalogPage
	if s := q.Get("n"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 0 {
			newOCIError(http.StatusBadRequest, "PAGINATION_NUMBER_INVALID", "invalid number of results requested").write(w)
			return
		}
		n = min(v, maxCatalogPage)
	}
	last := q.Get("last")
	repos, err := listRepos(ctx, r.driver)
	if err != nil {
		r.internalError(ctx, w, "list repositories", err)
		return
	}
	slices.Sort(repos)
	cache := rightsCache{}
	out := []string{}
	more := false
	for _, repo := range repos {
		if repo <= last {
			continue
		}
		have, err := r.rights(ctx, c, projectOf(repo), cache)
		if err != nil {
			r.internalError(ctx, w, "list repositories", err)
			return
		}
		if have&actPull == 0 {
			continue
		}
		if ok, err := hasContent(ctx, r.driver, repo); err != nil {
			r.internalError(ctx, w, "list repositories", err)
			return
		} else if !ok {
			continue
		}
		if len(out) == n {
			more = true
			break
		}
		out = append(out, repo)
	}
	if more && len(out) > 0 {
		next := url.Values{"n": {strconv.Itoa(n)}, "last": {out[len(out)-1]}}
		w.Header().Set("Link", `</v2/_catalog?`+next.Encode()+`>; rel="next"`)
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string][]string{"repositories": out})
}
