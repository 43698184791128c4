package depot

import (
	"encoding/base64"

	cliv1 "github.com/depot/depot-go/proto/depot/cli/v1"

	"github.com/kiln-dev/kiln/internal/depotext"
)

// registryUser is the user name kiln's registry takes with a kiln token as
// the password, as Depot's registry does.
const registryUser = "x-token"

// saveRequest reads --save and --save-tag from a CreateBuild request: any
// options entry with save set, or with save tags (which imply it). Tags
// of every entry are collected, in order.
func saveRequest(opts []*cliv1.BuildOptions) (save bool, tags []string) {
	for _, o := range opts {
		t := depotext.SaveTags(o)
		if o.GetSave() || len(t) > 0 {
			save = true
		}
		tags = append(tags, t...)
	}
	return save, tags
}

// loadRequest reads --load from a CreateBuild request: any options entry
// with load set.
//
// kiln answers such a build with registry.load_using_registry, the path of
// Depot's protocol where the depot CLI does not load from the builder (its
// fast path needs export metadata only Depot's BuildKit fork writes, and
// its fallback rebuilds, which a stdin context cannot): it turns on save,
// pushes the image to the additional tags (addSaveTargets; in a bake each
// with "-<target>" appended), asks GetPullInfo for the reference and a
// pull credential, and has Docker pull the reference (plus "-<target>") and
// tag it with the user's tags. The image is an ordinary saved image of the
// project: it expires with the project's retention like any other.
func loadRequest(opts []*cliv1.BuildOptions) bool {
	for _, o := range opts {
		if o.GetLoad() {
			return true
		}
	}
	return false
}

// addSaveTargets tells the client where to push a saved build, the way the
// depot CLI expects it for a server's own registry: every reference as an
// additional tag to push, and the build token as the registry credential
// of the registry host (base64 of "x-token:<token>", a Docker config
// "auth" value).
func addSaveTargets(res *cliv1.CreateBuildResponse, host string, refs []string, buildToken string) {
	for _, r := range refs {
		res.AdditionalTags = append(res.AdditionalTags, &cliv1.CreateBuildResponse_Tag{Tag: r, Push: true})
	}
	res.AdditionalCredentials = append(res.AdditionalCredentials, &cliv1.CreateBuildResponse_Credential{
		Host:  host,
		Token: base64.StdEncoding.EncodeToString([]byte(registryUser + ":" + buildToken)),
	})
}
