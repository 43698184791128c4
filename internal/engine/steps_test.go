package engine

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/moby/buildkit/client"
	digest "github.com/opencontainers/go-digest"
)

func TestStepRecorder(t *testing.T) {
	t0 := time.Unix(1000, 0)
	t1, t2 := t0.Add(time.Second), t0.Add(2*time.Second)
	a, b := digest.FromString("a"), digest.FromString("b")
	s := NewStepRecorder()
	s.Observe(nil)
	s.Observe(&client.SolveStatus{Vertexes: []*client.Vertex{{Digest: b, Name: "[2/2] RUN x"}}})
	s.Observe(&client.SolveStatus{Vertexes: []*client.Vertex{{Digest: a, Name: "[1/2] COPY", Started: &t0, Completed: &t0, Cached: true}}})
	s.Observe(&client.SolveStatus{Vertexes: []*client.Vertex{{Digest: b, Name: "[2/2] RUN x", Started: &t1}}})
	s.Observe(&client.SolveStatus{Vertexes: []*client.Vertex{{Digest: b, Name: "[2/2] RUN x", Started: &t1, Completed: &t2, Error: "exit code: 3"}}})

	steps := s.Steps()
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
	// Steps returns copies.
	*steps[0].Started = time.Time{}
	if s.Steps()[0].Started.IsZero() {
		t.Error("Steps shares time pointers")
	}
}

func TestWriteMetadataFile(t *testing.T) {
	desc := `{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:abc","size":10}`
	resp := &client.SolveResponse{ExporterResponse: map[string]string{
		"containerimage.digest":     "sha256:abc",
		"containerimage.descriptor": base64.StdEncoding.EncodeToString([]byte(desc)),
		"containerimage.config":     base64.StdEncoding.EncodeToString([]byte(`{"architecture":"amd64"}`)),
		"b64string":                 base64.StdEncoding.EncodeToString([]byte(`"just a string"`)),
		"image.name":                "app:1",
	}}
	p := filepath.Join(t.TempDir(), "meta.json")
	if err := WriteMetadataFile(p, resp); err != nil {
		t.Fatal(err)
	}
	dt, _ := os.ReadFile(p)
	var got map[string]any
	if err := json.Unmarshal(dt, &got); err != nil {
		t.Fatalf("%s: %v", dt, err)
	}
	if got["containerimage.digest"] != "sha256:abc" || got["image.name"] != "app:1" {
		t.Errorf("plain values: %v", got)
	}
	d, ok := got["containerimage.descriptor"].(map[string]any)
	if !ok || d["digest"] != "sha256:abc" {
		t.Errorf("descriptor not decoded: %#v", got["containerimage.descriptor"])
	}
	if c, ok := got["containerimage.config"].(map[string]any); !ok || c["architecture"] != "amd64" {
		t.Errorf("config not decoded: %#v", got["containerimage.config"])
	}
	if got["b64string"] != resp.ExporterResponse["b64string"] {
		t.Errorf("non-object base64 value changed: %#v", got["b64string"])
	}
}

func TestWriteIIDFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "iid")
	err := WriteIIDFile(p, &client.SolveResponse{ExporterResponse: map[string]string{}})
	if !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("no digest: %v", err)
	}
	if err := WriteIIDFile(p, &client.SolveResponse{ExporterResponse: map[string]string{"containerimage.digest": "sha256:img"}}); err != nil {
		t.Fatal(err)
	}
	if dt, _ := os.ReadFile(p); string(dt) != "sha256:img" {
		t.Errorf("iid = %q", dt)
	}
	if err := WriteIIDFile(p, &client.SolveResponse{ExporterResponse: map[string]string{
		"containerimage.digest": "sha256:img", "containerimage.config.digest": "sha256:cfg",
	}}); err != nil {
		t.Fatal(err)
	}
	if dt, _ := os.ReadFile(p); string(dt) != "sha256:cfg" {
		t.Errorf("iid = %q, want the config digest", dt)
	}
}
