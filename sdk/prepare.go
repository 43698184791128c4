package sdk

import (
	"path/filepath"

	"github.com/kiln-dev/kiln/internal/buildreq"
	"github.com/kiln-dev/kiln/internal/engine"
)

// prepare makes the engine's request for r, validating it (the context
// exists, the Dockerfile is there, keys are readable) before anything
// talks to a server. Secret values stay in memory. The caller closes the
// request.
func prepare(r buildreq.Request) (*engine.Request, error) {
	if p := r.Dockerfile.Path; p != "" && r.Context.Tar == nil && !filepath.IsAbs(p) {
		// The SDK's Dockerfile path is relative to the context directory,
		// not to the process's working directory.
		r.Dockerfile.Path = filepath.Join(r.Context.Dir, p)
	}
	return engine.Prepare(r, engine.IO{Progress: "quiet"})
}
