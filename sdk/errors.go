package sdk

import (
	"fmt"

	"github.com/kiln-dev/kiln/internal/errdefs"
)

// ErrInvalid is the kind of error a caller's own input causes: a bad
// option, a missing context or Dockerfile. Such errors are found before
// anything talks to a server; test for them with errors.Is.
var ErrInvalid = errdefs.ErrInvalid

func invalidf(format string, a ...any) error {
	return fmt.Errorf("sdk: "+format+": %w", append(a, ErrInvalid)...)
}

// BuildError is a build that ran and failed (or was canceled). Find it
// with errors.As; Execute's [Metadata] has the build's steps too.
type BuildError struct {
	// BuildID and ProjectID name the build (`kiln builds get BUILD_ID`).
	BuildID, ProjectID string
	// Step is the name of the step that failed, as BuildKit shows it
	// ("[stage-1 2/3] RUN make"); "" when the build failed outside a step.
	Step string
	// Err is why, as the builder or the server said it ("build ID
	// failed: ...").
	Err error
}

// Error names the failed step, then why it failed.
func (e *BuildError) Error() string {
	if e.Step != "" {
		return fmt.Sprintf("sdk: step %q failed: %v", e.Step, e.Err)
	}
	return fmt.Sprintf("sdk: %v", e.Err)
}

// Unwrap is Err.
func (e *BuildError) Unwrap() error { return e.Err }
