// Package steps folds a build's BuildKit status stream into the steps kiln
// records and reports: one set of merge rules for every client (the CLI,
// bake, the SDK and the server's source-build runner).
package steps

import (
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/moby/buildkit/client"
)

// Step is one build step: a BuildKit vertex, or a step kiln adds itself
// ("[kiln] fetch and check the build context"). Zero times are unknown.
type Step struct {
	Digest    string
	Name      string
	Cached    bool
	Started   time.Time
	Completed time.Time
	Error     string
}

// LogLine is output a step printed.
type LogLine struct {
	Digest  string
	At      time.Time
	Message string
}

// Recorder folds a build's status stream into steps, the one place their
// merge rules live: BuildKit resends a vertex whenever it changes, and may
// send only what changed; the earliest start, the latest completion, a
// cache hit, the latest error and the latest name win. It is safe for
// concurrent use; pass [Recorder.Observe] to a solve.
//
// A recorder keeps every step for [Recorder.Steps] (what a client reports
// when the build ends) and tracks what changed for [Recorder.Drain] (what
// the server stores as the build runs).
type Recorder struct {
	keepLogs bool

	mu        sync.Mutex
	steps     []Step
	index     map[string]int // digest → position in steps
	dirty     []int          // positions changed since the last Drain, in the order they changed
	marked    []bool         // by position: in dirty
	logs      []LogLine
	exporting bool // the image export has started
	reported  bool // Drain has said so
}

// NewRecorder returns an empty recorder; with keepLogs it also keeps the
// steps' log lines for Drain.
func NewRecorder(keepLogs bool) *Recorder {
	return &Recorder{keepLogs: keepLogs, index: map[string]int{}}
}

// Observe records one status update.
func (r *Recorder) Observe(st *client.SolveStatus) {
	if st == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, v := range st.Vertexes {
		if v == nil || v.Digest == "" {
			continue
		}
		s := Step{Digest: v.Digest.String(), Name: v.Name, Cached: v.Cached, Error: v.Error}
		if v.Started != nil {
			s.Started = v.Started.UTC()
			if isExport(v.Name) {
				r.exporting = true
			}
		}
		if v.Completed != nil {
			s.Completed = v.Completed.UTC()
		}
		r.put(s)
	}
	if !r.keepLogs {
		return
	}
	for _, l := range st.Logs {
		if l == nil || len(l.Data) == 0 {
			continue
		}
		at := l.Timestamp
		if at.IsZero() {
			at = time.Now()
		}
		r.logs = append(r.logs, LogLine{Digest: l.Vertex.String(), At: at.UTC(), Message: string(l.Data)})
	}
}

// put merges s into what is known of its step. r.mu is held.
func (r *Recorder) put(s Step) {
	i, seen := r.index[s.Digest]
	if !seen {
		i = len(r.steps)
		r.index[s.Digest] = i
		r.steps = append(r.steps, Step{Digest: s.Digest})
		r.marked = append(r.marked, false)
	}
	r.steps[i] = Merge(r.steps[i], s)
	if !r.marked[i] {
		r.marked[i] = true
		r.dirty = append(r.dirty, i)
	}
}

// Merge folds a newer report s of a step into what is known of it, old:
// the earliest start, the latest completion, a cache hit, the latest
// non-empty error and the latest non-empty name win. It is the one place
// these rules live: the Recorder folds a status stream with it, and the
// store folds reports from several sources (the builder, the client) of
// one step with it, so the order in which they arrive does not matter
// beyond "latest error and name".
func Merge(old, s Step) Step {
	if s.Name != "" {
		old.Name = s.Name
	}
	old.Cached = old.Cached || s.Cached
	if !s.Started.IsZero() && (old.Started.IsZero() || s.Started.Before(old.Started)) {
		old.Started = s.Started
	}
	if !s.Completed.IsZero() && s.Completed.After(old.Completed) {
		old.Completed = s.Completed
	}
	if s.Error != "" {
		old.Error = s.Error
	}
	return old
}

// Begin starts a step of kiln's own.
func (r *Recorder) Begin(digest, name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.put(Step{Digest: digest, Name: name, Started: time.Now().UTC()})
}

// End completes a step of kiln's own, failed when err is not nil.
func (r *Recorder) End(digest string, err error) {
	s := Step{Digest: digest, Completed: time.Now().UTC()}
	if err != nil {
		s.Error = err.Error()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.put(s)
}

// Log adds a line to a step's log (kept only with keepLogs).
func (r *Recorder) Log(digest, msg string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.keepLogs {
		r.logs = append(r.logs, LogLine{Digest: digest, At: time.Now().UTC(), Message: msg})
	}
}

// Steps returns every step, whole, in first-seen order.
func (r *Recorder) Steps() []Step {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.steps)
}

// Drain returns the steps changed since the last Drain, each whole (so a
// store that replaces a step by digest keeps everything known of it), the
// log lines since then, and whether the image export started since then
// (true once per build).
func (r *Recorder) Drain() (steps []Step, logs []LogLine, exportStarted bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, i := range r.dirty {
		steps = append(steps, r.steps[i])
		r.marked[i] = false
	}
	logs = r.logs
	r.dirty, r.logs = nil, nil
	if r.exporting && !r.reported {
		r.reported, exportStarted = true, true
	}
	return steps, logs, exportStarted
}

// isExport matches the vertex BuildKit's image exporter shows
// ("exporting to image"), which also pushes.
func isExport(name string) bool {
	return strings.HasPrefix(name, "exporting to image") || strings.HasPrefix(name, "pushing ")
}
