package engine

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/moby/buildkit/client"
)

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
