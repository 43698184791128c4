package steps

import (
	"errors"
	"testing"
	"time"

	"github.com/moby/buildkit/client"
	digest "github.com/opencontainers/go-digest"
)

func TestRecorderMerges(t *testing.T) {
	t0 := time.Unix(1000, 0).UTC()
	t1, t2 := t0.Add(time.Second), t0.Add(2*time.Second)
	a, b := digest.FromString("a"), digest.FromString("b")
	r := NewRecorder(false)
	r.Observe(nil)
	r.Observe(&client.SolveStatus{Vertexes: []*client.Vertex{{Digest: b, Name: "[2/2] RUN x"}}})
	r.Observe(&client.SolveStatus{Vertexes: []*client.Vertex{{Digest: a, Name: "[1/2] COPY", Started: &t0, Completed: &t0, Cached: true}}})
	r.Observe(&client.SolveStatus{Vertexes: []*client.Vertex{{Digest: b, Name: "[2/2] RUN x", Started: &t1}}})
	// An update may carry only what changed: a completion without its start.
	r.Observe(&client.SolveStatus{Vertexes: []*client.Vertex{{Digest: b, Completed: &t2, Error: "exit code: 3"}}})
	// A later, smaller start and an earlier completion do not win.
	r.Observe(&client.SolveStatus{Vertexes: []*client.Vertex{{Digest: b, Started: &t2, Completed: &t1}}})

	steps := r.Steps()
	if len(steps) != 2 {
		t.Fatalf("steps = %+v", steps)
	}
	if steps[0].Digest != b.String() || steps[1].Digest != a.String() {
		t.Errorf("order: %s %s", steps[0].Digest, steps[1].Digest)
	}
	run := steps[0]
	if run.Name != "[2/2] RUN x" || run.Cached || !run.Started.Equal(t1) || !run.Completed.Equal(t2) || run.Error != "exit code: 3" {
		t.Errorf("run step = %+v", run)
	}
	if cp := steps[1]; !cp.Cached || !cp.Started.Equal(t0) || cp.Error != "" {
		t.Errorf("copy step = %+v", cp)
	}
}

func TestRecorderDrain(t *testing.T) {
	t0 := time.Unix(1000, 0).UTC()
	a, b := digest.FromString("a"), digest.FromString("b")
	r := NewRecorder(true)
	r.Begin("kiln:context", "[kiln] fetch")
	r.Log("kiln:context", "3 entries\n")
	r.End("kiln:context", errors.New("too big"))
	r.Observe(&client.SolveStatus{
		Vertexes: []*client.Vertex{{Digest: a, Name: "[1/1] FROM x", Started: &t0}},
		Logs:     []*client.VertexLog{{Vertex: a, Data: []byte("hi\n"), Timestamp: t0}, {Vertex: a}},
	})
	steps, logs, exp := r.Drain()
	if len(steps) != 2 || steps[0].Error != "too big" || steps[0].Started.IsZero() || steps[0].Completed.IsZero() || exp {
		t.Fatalf("first drain: steps %+v exporting %v", steps, exp)
	}
	if len(logs) != 2 || logs[0].Message != "3 entries\n" || logs[1].Message != "hi\n" || !logs[1].At.Equal(t0) {
		t.Fatalf("first drain: logs %+v", logs)
	}
	// Only what changed is drained again, whole; the export is said once.
	r.Observe(&client.SolveStatus{Vertexes: []*client.Vertex{{Digest: b, Name: "exporting to image", Started: &t0}}})
	r.Observe(&client.SolveStatus{Vertexes: []*client.Vertex{{Digest: a, Completed: &t0}}})
	steps, logs, exp = r.Drain()
	if len(steps) != 2 || steps[0].Digest != b.String() || steps[1].Digest != a.String() || steps[1].Name != "[1/1] FROM x" || len(logs) != 0 || !exp {
		t.Fatalf("second drain: %+v %+v %v", steps, logs, exp)
	}
	r.Observe(&client.SolveStatus{Vertexes: []*client.Vertex{{Digest: b, Name: "exporting to image", Started: &t0, Completed: &t0}}})
	if _, _, exp := r.Drain(); exp {
		t.Fatal("the export was reported twice")
	}
	if steps, logs, _ := r.Drain(); len(steps)+len(logs) != 0 {
		t.Fatalf("an empty drain returned %+v %+v", steps, logs)
	}
}

func TestRecorderWithoutLogs(t *testing.T) {
	r := NewRecorder(false)
	r.Log("x", "y")
	r.Observe(&client.SolveStatus{Logs: []*client.VertexLog{{Vertex: digest.FromString("a"), Data: []byte("z")}}})
	if _, logs, _ := r.Drain(); len(logs) != 0 {
		t.Fatalf("logs kept: %+v", logs)
	}
}
