package registry

import (
	"net/http"
	"regexp"
	"strings"

	"github.com/opencontainers/go-digest"
)

// routeKind is which registry endpoint a path names.
type routeKind int

const (
	routeBase        routeKind = iota // /v2/
	routeToken                        // /v2/token (the token endpoint)
	routeCatalog                      // /v2/_catalog
	routeTags                         // /v2/<name>/tags/list
	routeManifest                     // /v2/<name>/manifests/<tag|digest>
	routeBlob                         // /v2/<name>/blobs/<digest>
	routeUploadStart                  // /v2/<name>/blobs/uploads/
	routeUpload                       // /v2/<name>/blobs/uploads/<id>
	routeReferrers                    // /v2/<name>/referrers/<digest>
)

// route is a parsed, validated registry path.
type route struct {
	kind routeKind
	name string // repository; "" for base, token and catalog
	// project is the repository's first path segment.
	project string
	// ref: a manifest's tag or digest, a blob's or referrers' digest, an
	// upload's id.
	ref string
	// dgst is ref parsed, when ref is a digest.
	dgst digest.Digest
	// badTag: a manifest ref that is neither a digest nor a valid tag. No
	// manifest can be stored under it, so reading or deleting it is 404
	// MANIFEST_UNKNOWN, as for any absent tag; pushing to it is 400
	// TAG_INVALID (tagRefused).
	badTag bool
}

var (
	// A repository path component, as the OCI distribution spec defines it.
	nameComponent = regexp.MustCompile(`^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*$`)
	tagPattern    = regexp.MustCompile(`^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$`)
	// Upload ids are distribution's UUIDs; anything else is refused early
	// (they become storage paths and pin keys).
	uploadIDPattern = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9._=-]{0,127}$`)
)

// maxNameLength bounds a repository name (the spec: fewer than 256 characters).
const maxNameLength = 255

// parseRoute maps a request path to a route. A path that names a
// repository or digest badly is an OCI error (NAME_INVALID,
// DIGEST_INVALID); one that names no endpoint is 404. A bad tag is marked
// (route.badTag): what it means depends on the method.
func parseRoute(path string) (route, *ociError) {
	rest, ok := strings.CutPrefix(path, "/v2/")
	if !ok {
		if path == "/v2" {
			return route{kind: routeBase}, nil
		}
		return route{}, errNoEndpoint
	}
	switch rest {
	case "":
		return route{kind: routeBase}, nil
	case "token":
		return route{kind: routeToken}, nil
	case "_catalog":
		return route{kind: routeCatalog}, nil
	}
	segs := strings.Split(rest, "/")
	n := len(segs)
	var rt route
	var nameSegs []string
	switch {
	case n >= 3 && segs[n-2] == "tags" && segs[n-1] == "list":
		rt.kind, nameSegs = routeTags, segs[:n-2]
	case n >= 4 && segs[n-3] == "blobs" && segs[n-2] == "uploads" && segs[n-1] == "":
		rt.kind, nameSegs = routeUploadStart, segs[:n-3]
	case n >= 3 && segs[n-2] == "blobs" && segs[n-1] == "uploads":
		rt.kind, nameSegs = routeUploadStart, segs[:n-2]
	case n >= 4 && segs[n-3] == "blobs" && segs[n-2] == "uploads":
		rt.kind, rt.ref, nameSegs = routeUpload, segs[n-1], segs[:n-3]
	case n >= 3 && segs[n-2] == "manifests":
		rt.kind, rt.ref, nameSegs = routeManifest, segs[n-1], segs[:n-2]
	case n >= 3 && segs[n-2] == "blobs":
		rt.kind, rt.ref, nameSegs = routeBlob, segs[n-1], segs[:n-2]
	case n >= 3 && segs[n-2] == "referrers":
		rt.kind, rt.ref, nameSegs = routeReferrers, segs[n-1], segs[:n-2]
	default:
		return route{}, errNoEndpoint
	}
	name, oerr := validName(nameSegs)
	if oerr != nil {
		return route{}, oerr
	}
	rt.name, rt.project = name, nameSegs[0]
	switch rt.kind {
	case routeManifest:
		if strings.Contains(rt.ref, ":") {
			d, err := digest.Parse(rt.ref)
			if err != nil {
				return route{}, newOCIError(http.StatusBadRequest, "DIGEST_INVALID", "invalid digest "+quote(rt.ref))
			}
			rt.dgst = d
		} else if !tagPattern.MatchString(rt.ref) {
			rt.badTag = true
		}
	case routeBlob, routeReferrers:
		d, err := digest.Parse(rt.ref)
		if err != nil {
			return route{}, newOCIError(http.StatusBadRequest, "DIGEST_INVALID", "invalid digest "+quote(rt.ref))
		}
		rt.dgst = d
	case routeUpload:
		if !uploadIDPattern.MatchString(rt.ref) {
			return route{}, newOCIError(http.StatusNotFound, "BLOB_UPLOAD_UNKNOWN", "blob upload unknown to registry")
		}
	}
	return rt, nil
}

// tagRefused is the answer to a request that would store a manifest under
// a bad tag, or nil. The spec answers pulls (and deletes) of a name that
// holds no manifest with 404 MANIFEST_UNKNOWN, whatever the name; the
// official conformance suite pulls ".INVALID_MANIFEST_NAME" and expects
// just that. A push names where to store, and a name that cannot hold a
// manifest is the client's error: 400 TAG_INVALID, before authentication.
func tagRefused(rt route, method string) *ociError {
	if !rt.badTag {
		return nil
	}
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodDelete:
		return nil
	}
	return newOCIError(http.StatusBadRequest, "TAG_INVALID", "invalid tag "+quote(rt.ref)+": tags match [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
}

// errManifestUnknown answers a read or delete of a manifest that is not
// there.
var errManifestUnknown = newOCIError(http.StatusNotFound, "MANIFEST_UNKNOWN", "manifest unknown to registry")

// validName checks a repository name's components and length.
func validName(segs []string) (string, *ociError) {
	name := strings.Join(segs, "/")
	if len(segs) == 0 || len(name) > maxNameLength {
		return "", newOCIError(http.StatusBadRequest, "NAME_INVALID", "invalid repository name: at most 255 characters")
	}
	for _, s := range segs {
		if !nameComponent.MatchString(s) {
			return "", newOCIError(http.StatusBadRequest, "NAME_INVALID",
				"invalid repository name "+quote(name)+": path components are lowercase letters and digits separated by '.', '_', '__' or '-'")
		}
	}
	return name, nil
}

// validRepository reports whether name is a repository name kiln serves.
func validRepository(name string) bool {
	_, err := validName(strings.Split(name, "/"))
	return err == nil
}

// quote bounds and quotes client-chosen text echoed in an error message.
func quote(s string) string {
	if len(s) > 140 {
		s = s[:140] + "…"
	}
	return `"` + strings.ToValidUTF8(s, "?") + `"`
}
