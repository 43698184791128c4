package sdk

import (
	"fmt"
	"strings"
	"testing"
	"time"

	bkclient "github.com/moby/buildkit/client"
	"github.com/opencontainers/go-digest"

	"github.com/kiln-dev/kiln/internal/steps"
)

// BuildKit resends a vertex whenever it changes, and the server replays a
// build's steps to a watcher that reconnects: each step still starts once
// and ends once.
func TestProgressSendsEachTransitionOnce(t *testing.T) {
	var got []string
	p := newProgress(func(e Event) {
		s := e.Type.String() + " " + e.Step.Name
		if e.Type == Log {
			s += ": " + strings.TrimSpace(e.Log)
		}
		got = append(got, s)
	})
	t0 := time.Unix(100, 0)
	t1 := t0.Add(time.Second)
	run, cached, bad := digest.FromString("run"), digest.FromString("cached"), digest.FromString("bad")
	status := func(vs ...*bkclient.Vertex) { p.tap(&bkclient.SolveStatus{Vertexes: vs}) }

	status(&bkclient.Vertex{Digest: run, Name: "RUN make"})               // known, not started
	status(&bkclient.Vertex{Digest: run, Name: "RUN make", Started: &t0}) // started
	p.tap(&bkclient.SolveStatus{Logs: []*bkclient.VertexLog{{Vertex: run, Data: []byte("compiling\n"), Timestamp: t0}}})
	status(&bkclient.Vertex{Digest: run, Name: "RUN make", Started: &t0, Completed: &t1})
	status(&bkclient.Vertex{Digest: run, Name: "RUN make", Started: &t0, Completed: &t1}) // resent
	status(&bkclient.Vertex{Digest: cached, Name: "COPY . /", Cached: true, Started: &t0, Completed: &t0})
	p.step(steps.Step{Digest: bad.String(), Name: "RUN test", Started: t0})
	p.step(steps.Step{Digest: bad.String(), Name: "RUN test", Started: t0, Completed: t1, Error: "exit code: 1"})
	p.step(steps.Step{Digest: bad.String(), Name: "RUN test", Started: t0, Completed: t1, Error: "exit code: 1"}) // replayed

	want := []string{
		"started RUN make", "log RUN make: compiling", "completed RUN make",
		"started COPY . /", "cached COPY . /",
		"started RUN test", "failed RUN test",
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("events:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if name := p.failedStep(); name != "RUN test" {
		t.Errorf("failed step %q", name)
	}
	for _, s := range p.steps() {
		if s.Name == "RUN make" && s.Duration != time.Second {
			t.Errorf("RUN make took %s", s.Duration)
		}
	}
}
