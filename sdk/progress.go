package sdk

import (
	"sync"
	"time"

	bkclient "github.com/moby/buildkit/client"
	"github.com/opencontainers/go-digest"

	"github.com/kiln-dev/kiln/internal/steps"
)

// EventType says what an [Event] reports.
type EventType int

// Every step that starts sends StepStarted, then, when it ends, exactly
// one of StepCompleted, StepCached and StepFailed. Log events come in
// between, as the step prints.
const (
	// StepStarted: the step began (or was found in the cache).
	StepStarted EventType = iota + 1
	// StepCompleted: the step ran and succeeded.
	StepCompleted
	// StepCached: the step's result came from the cache; it did not run.
	StepCached
	// StepFailed: the step failed; Step.Error says why.
	StepFailed
	// Log: the step printed Event.Log.
	Log
)

// String is the event type in lower case: "started", "completed", ...
func (t EventType) String() string {
	switch t {
	case StepStarted:
		return "started"
	case StepCompleted:
		return "completed"
	case StepCached:
		return "cached"
	case StepFailed:
		return "failed"
	case Log:
		return "log"
	}
	return "unknown"
}

// Event is one piece of a build's progress, given to [WithProgress]'s
// function.
type Event struct {
	Type EventType
	// Step is the step the event is about, as known when it was sent
	// (for a Log event, the step that printed).
	Step Step
	// Log is what the step printed (Log events only): one or more lines,
	// as the step wrote them.
	Log string
}

// Step is one build step: a Dockerfile instruction, or work BuildKit
// does around them ("[internal] load build definition from Dockerfile",
// "exporting to image").
type Step struct {
	// Name is the step as BuildKit shows it: "[2/3] RUN make".
	Name string
	// Digest identifies the step within the build.
	Digest string
	// Cached is true when the result came from the cache.
	Cached bool
	// Started is when the step started; zero if unknown.
	Started time.Time
	// Duration is how long it ran; zero until it ends.
	Duration time.Duration
	// Error is why the step failed; "" if it did not.
	Error string
}

func stepOf(s steps.Step) Step {
	out := Step{Name: s.Name, Digest: s.Digest, Cached: s.Cached, Started: s.Started, Error: s.Error}
	if !s.Started.IsZero() && !s.Completed.IsZero() {
		out.Duration = s.Completed.Sub(s.Started)
	}
	return out
}

// progress folds a build's status (BuildKit's, or the server's for an
// uploaded context) into steps through the one [steps.Recorder], and
// turns what changed into Events. Statuses may arrive from several
// goroutines (one solve per platform); mu serializes them, so fn sees one
// event at a time, in order.
type progress struct {
	fn func(Event)

	mu    sync.Mutex
	rec   *steps.Recorder
	state map[string]*stepState // by digest
}

type stepState struct{ started, ended bool }

func newProgress(fn func(Event)) *progress {
	return &progress{fn: fn, rec: steps.NewRecorder(true), state: map[string]*stepState{}}
}

// tap is a [session.RunOptions] Tap: it sees each BuildKit status and
// passes it on unchanged.
func (p *progress) tap(st *bkclient.SolveStatus) *bkclient.SolveStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rec.Observe(st)
	p.emit()
	return st
}

// step records a step the server reports (an uploaded context's build),
// as a status update from BuildKit would be.
func (p *progress) step(s steps.Step) {
	v := &bkclient.Vertex{Digest: digest.Digest(s.Digest), Name: s.Name, Cached: s.Cached, Error: s.Error}
	if !s.Started.IsZero() {
		t := s.Started
		v.Started = &t
	}
	if !s.Completed.IsZero() {
		t := s.Completed
		v.Completed = &t
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rec.Observe(&bkclient.SolveStatus{Vertexes: []*bkclient.Vertex{v}})
	p.emit()
}

// log records a line the server reports a step printed.
func (p *progress) log(stepDigest, msg string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rec.Log(stepDigest, msg)
	p.emit()
}

// emit sends the events of what changed since the last call. p.mu is held.
func (p *progress) emit() {
	changed, logs, _ := p.rec.Drain()
	if p.fn == nil {
		return
	}
	byDigest := map[string]steps.Step{}
	for _, s := range changed {
		byDigest[s.Digest] = s
		st := p.state[s.Digest]
		if st == nil {
			st = &stepState{}
			p.state[s.Digest] = st
		}
		if !st.started && (!s.Started.IsZero() || !s.Completed.IsZero() || s.Cached || s.Error != "") {
			st.started = true
			p.fn(Event{Type: StepStarted, Step: stepOf(s)})
		}
		if st.ended || !st.started {
			continue
		}
		switch {
		case s.Error != "":
			st.ended = true
			p.fn(Event{Type: StepFailed, Step: stepOf(s)})
		case s.Completed.IsZero():
		case s.Cached:
			st.ended = true
			p.fn(Event{Type: StepCached, Step: stepOf(s)})
		default:
			st.ended = true
			p.fn(Event{Type: StepCompleted, Step: stepOf(s)})
		}
	}
	for _, l := range logs {
		s, ok := byDigest[l.Digest]
		if !ok {
			s = p.find(l.Digest)
		}
		p.fn(Event{Type: Log, Step: stepOf(s), Log: l.Message})
	}
}

// find is the recorded step of digest. p.mu is held.
func (p *progress) find(digest string) steps.Step {
	for _, s := range p.rec.Steps() {
		if s.Digest == digest {
			return s
		}
	}
	return steps.Step{Digest: digest}
}

// steps are the build's steps so far.
func (p *progress) steps() []Step {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []Step
	for _, s := range p.rec.Steps() {
		out = append(out, stepOf(s))
	}
	return out
}

// failedStep is the name of the step that failed last, or "".
func (p *progress) failedStep() string {
	name := ""
	for _, s := range p.steps() {
		if s.Error != "" && s.Name != "" {
			name = s.Name
		}
	}
	return name
}
