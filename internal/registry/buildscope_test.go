package registry

import (
	"testing"

	"github.com/kiln-dev/kiln/internal/auth"
)

func TestBuildScopeRefusal(t *testing.T) {
	scoped := caller{p: auth.Principal{Kind: auth.TokenPull, OrgID: "o", ProjectID: "p1", BuildID: "b1"}}
	project := caller{p: auth.Principal{Kind: auth.TokenPull, OrgID: "o", ProjectID: "p1"}}
	const dgst = "sha256:" + "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	for path, allowed := range map[string]bool{
		"/v2/":                     true,
		"/v2/p1/manifests/b1":      true,
		"/v2/p1/manifests/b1-app":  true,
		"/v2/p1/manifests/" + dgst: true,
		"/v2/p1/blobs/" + dgst:     true,
		"/v2/p1/manifests/v1":      false, // another tag of the project
		"/v2/p1/manifests/b10":     false, // another build whose id starts alike
		"/v2/p1/manifests/b2-b1":   false,
		"/v2/p1/app/manifests/b1":  false, // another repository of the project
		"/v2/p1/app/blobs/" + dgst: false,
		"/v2/p2/manifests/b1":      false,
		"/v2/p1/tags/list":         false,
		"/v2/p1/referrers/" + dgst: false,
		"/v2/_catalog":             false,
		"/v2/p1/blobs/uploads/":    false,
	} {
		rt, oerr := parseRoute(path)
		if oerr != nil {
			t.Fatalf("parseRoute(%s): %v", path, oerr)
		}
		if got := buildScopeRefusal(scoped, rt) == ""; got != allowed {
			t.Errorf("build-scoped pull token, %s: allowed=%v, want %v", path, got, allowed)
		}
		if r := buildScopeRefusal(project, rt); r != "" {
			t.Errorf("project pull token, %s: refused (%s); only build-scoped tokens are limited here", path, r)
		}
	}
}
