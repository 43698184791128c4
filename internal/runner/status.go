package runner

import (
	"strings"
	"time"

	bkclient "github.com/moby/buildkit/client"

	"github.com/kiln-dev/kiln/internal/store"
)

// statusRecords turns one BuildKit status update into the steps and log
// lines kiln stores (the same records clients report through
// ReportStatusStream). exporting is true when the update shows the image
// export has started: the build is pushing.
func statusRecords(st *bkclient.SolveStatus) (steps []store.Step, logs []store.LogLine, exporting bool) {
	for _, v := range st.Vertexes {
		if v == nil || v.Digest == "" {
			continue
		}
		step := store.Step{Digest: v.Digest.String(), Name: v.Name, Cached: v.Cached, Error: v.Error}
		if v.Started != nil {
			step.StartedAt = v.Started.UTC()
		}
		if v.Completed != nil {
			step.CompletedAt = v.Completed.UTC()
		}
		if v.Started != nil && isExport(v.Name) {
			exporting = true
		}
		steps = append(steps, step)
	}
	for _, l := range st.Logs {
		if l == nil || len(l.Data) == 0 {
			continue
		}
		at := l.Timestamp
		if at.IsZero() {
			at = time.Now()
		}
		logs = append(logs, store.LogLine{Digest: l.Vertex.String(), At: at.UTC(), Message: string(l.Data)})
	}
	return steps, logs, exporting
}

// isExport matches the vertex BuildKit's image exporter shows
// ("exporting to image"), which also pushes.
func isExport(name string) bool {
	return strings.HasPrefix(name, "exporting to image") || strings.HasPrefix(name, "pushing ")
}
