package registry

import (
	"strings"

	"github.com/kiln-dev/kiln/internal/auth"
)

// Build-scoped pull tokens. GetPullInfo (the depot CLI's --load and
// `depot pull`) mints a pull token for one build (auth.Token.BuildID set):
// it reads only that build's image — in the project's own repository, the
// manifests tagged <build id> or <build id>-<bake target>, and by digest
// what they reference — and lists nothing (no tags, referrers or catalog).
// Reads by digest are not traced back to the build's manifests: a digest
// of another image of the project is content the caller would have to
// know already.

// errBuildScope is the refusal of a request outside a build-scoped pull
// token's image.
const errBuildScope = "this pull token reads only its build's image"

// buildScopeRefusal is why c may not make the request on rt, or "": only
// build-scoped pull tokens are limited here; everything else is decided by
// rights and grants (authorize).
func buildScopeRefusal(c caller, rt route) string {
	id := c.p.BuildID
	if c.p.Kind != auth.TokenPull || id == "" {
		return ""
	}
	switch rt.kind {
	case routeBase:
		return ""
	case routeManifest, routeBlob:
		if rt.name != c.p.ProjectID {
			return errBuildScope
		}
		if rt.kind == routeManifest && rt.dgst == "" && rt.ref != id && !strings.HasPrefix(rt.ref, id+"-") {
			return errBuildScope
		}
		return ""
	}
	return errBuildScope
}
