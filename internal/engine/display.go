package engine

import (
	"io"

	"github.com/moby/buildkit/client"
)

// PrefixStatus returns s as it belongs in a progress display shared by
// several builds, e.g. the targets of a bake: step names carry prefix
// ("[build 2/3] RUN x" becomes "[app build 2/3] RUN x", "exporting to
// image" becomes "[app] exporting to image") and vertex digests are made
// distinct per prefix, so two builds running the same step show as two
// steps rather than one merged one. It is the renaming [SolveMulti]
// applies per platform; s is not modified.
func PrefixStatus(prefix string, s *client.SolveStatus) *client.SolveStatus {
	return platformStatus(prefix, s)
}

// PrintWarnings prints the frontend's warnings a progress display
// collected, the way [Solve] prints them after its own display.
func PrintWarnings(w io.Writer, warnings []client.VertexWarning) {
	if len(warnings) > 0 {
		printWarnings(w, warnings)
	}
}
