package cli

import (
	"fmt"
	"io"
	"strings"

	cliv1 "github.com/depot/depot-go/proto/depot/cli/v1"

	"github.com/kiln-dev/kiln/internal/engine"
	"github.com/kiln-dev/kiln/internal/session"
)

// kiln build --save: the server names where the build is saved in its
// registry (CreateBuildResponse.additional_tags: <project>:<build id> and
// one per --save-tag) and lends the build token to push with
// (additional_credentials); the builder pushes there as it exports, with
// those credentials layered over the user's Docker credentials in memory.

func (bf *buildFlags) saving() bool { return bf.save || len(bf.saveTags) > 0 }

// checkSaveFlags validates --save and --save-tag before the server is
// asked for anything.
func checkSaveFlags(bf *buildFlags, req *engine.Request) error {
	if !bf.saving() {
		return nil
	}
	return session.CheckSave(req, bf.saveTags)
}

// requestSave asks CreateBuild to save the build.
func requestSave(bf *buildFlags, o *cliv1.BuildOptions) {
	if bf.saving() {
		session.RequestSave(o, bf.saveTags)
	}
}

// applySave adds the save push to req from the server's answer and
// returns the references the image will be saved as.
func applySave(req *engine.Request, b *session.Remote) ([]string, error) {
	if len(b.SaveRefs) == 0 {
		return nil, fmt.Errorf("--save: the server did not say where to save the image (it has no registry, or is not a kiln server that supports --save)")
	}
	return b.SaveRefs, req.AddSave(b.SaveRefs, b.SaveCreds)
}

// printSaved says where a saved build is and how to get it.
func printSaved(w io.Writer, refs []string, buildID string) {
	if len(refs) == 0 {
		return
	}
	fmt.Fprintf(w, "kiln: saved to kiln's registry as %s\n", strings.Join(refs, ", "))
	fmt.Fprintf(w, "kiln: pull it with `kiln pull %s -t NAME`; copy it to another registry with `kiln push %s -t REGISTRY/REPO:TAG`\n", buildID, buildID)
}
