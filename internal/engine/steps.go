package engine

import (
	"slices"
	"sync"
	"time"

	"github.com/moby/buildkit/client"
)

// Step is one build vertex as observed in the status stream, for
// reporting to the server.
type Step struct {
	Digest    string
	Name      string
	Cached    bool
	Started   *time.Time
	Completed *time.Time
	Error     string
}

// StepRecorder folds a build's status stream into per-vertex [Step]
// records. It is safe for concurrent use; pass its Observe method to
// [Solve].
type StepRecorder struct {
	mu    sync.Mutex
	steps []Step
	index map[string]int // digest → position in steps
}

// NewStepRecorder returns an empty recorder.
func NewStepRecorder() *StepRecorder {
	return &StepRecorder{index: map[string]int{}}
}

// Observe records the vertexes in s. BuildKit resends a vertex whenever it
// changes; the earliest start, the latest completion, a cache hit and the
// latest error win.
func (s *StepRecorder) Observe(st *client.SolveStatus) {
	if st == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, v := range st.Vertexes {
		if v == nil || v.Digest == "" {
			continue
		}
		d := v.Digest.String()
		i, ok := s.index[d]
		if !ok {
			i = len(s.steps)
			s.index[d] = i
			s.steps = append(s.steps, Step{Digest: d})
		}
		step := &s.steps[i]
		if v.Name != "" {
			step.Name = v.Name
		}
		if v.Cached {
			step.Cached = true
		}
		if v.Started != nil && (step.Started == nil || v.Started.Before(*step.Started)) {
			step.Started = copyTime(v.Started)
		}
		if v.Completed != nil && (step.Completed == nil || v.Completed.After(*step.Completed)) {
			step.Completed = copyTime(v.Completed)
		}
		if v.Error != "" {
			step.Error = v.Error
		}
	}
}

// Steps returns a copy of the recorded steps in first-seen order.
func (s *StepRecorder) Steps() []Step {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := slices.Clone(s.steps)
	for i := range out {
		out[i].Started = copyTime(out[i].Started)
		out[i].Completed = copyTime(out[i].Completed)
	}
	return out
}

func copyTime(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	c := *t
	return &c
}
