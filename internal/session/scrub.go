package session

import (
	"regexp"

	"github.com/moby/buildkit/client"
)

// BuildKit's own errors name paths on the server: a builder's state and
// temporary directories sit in kiln's data directory
// (DATA/builders/<project>/<arch>/…), and "failed to copy:
// /var/lib/kiln/builders/…/tmp/containerd-mount…: no space left on device"
// would tell every user where kiln keeps its data. Those errors reach the
// client straight from its builder, so the client takes the server's part
// of such paths out of what it shows and reports: the step errors of the
// status stream (which the progress display, the recorded steps and the
// server's step log get) and the solve's error.

// builderPath matches a path into a builder's directory, up to and
// including its <project>/<arch> part.
var builderPath = regexp.MustCompile(`(?:/[^\s"':/]+)*/builders/[a-z0-9][a-z0-9-]*/[a-z0-9][a-z0-9-]*`)

// scrubPaths replaces the server's part of builder paths in s with
// "[builder]".
func scrubPaths(s string) string {
	return builderPath.ReplaceAllString(s, "[builder]")
}

// scrubStatus takes server paths out of st's step errors, in place.
func scrubStatus(st *client.SolveStatus) {
	for _, v := range st.Vertexes {
		if v.Error != "" {
			v.Error = scrubPaths(v.Error)
		}
	}
}

// scrubbedError is err with server paths taken out of its text; errors.Is
// and As still see err.
type scrubbedError struct{ err error }

func (e scrubbedError) Error() string { return scrubPaths(e.err.Error()) }
func (e scrubbedError) Unwrap() error { return e.err }

// scrubError returns err with server paths out of its text, or err itself
// when it names none.
func scrubError(err error) error {
	if err == nil || !builderPath.MatchString(err.Error()) {
		return err
	}
	return scrubbedError{err}
}
