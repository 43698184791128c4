package runner

import (
	"slices"
	"testing"

	"github.com/kiln-dev/kiln/internal/buildreq"
	"github.com/kiln-dev/kiln/internal/platform"
)

// The runner builds the spec as a typed request: no flag strings, the
// sealed secrets as values.
func TestSpecRequest(t *testing.T) {
	spec := Spec{ContextKey: "k", Platforms: []string{"arm64", "linux/amd64"}, BuildArgs: map[string]string{"A": "1"}}
	if err := spec.normalize(nil); err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	req, err := spec.request(root, root+"/Dockerfile", map[string][]byte{"tok": []byte("s3cret"), "empty": nil})
	if err != nil {
		t.Fatal(err)
	}
	if req.Context.Dir != root || req.Dockerfile.Path != root+"/Dockerfile" || req.Args["A"] != "1" {
		t.Errorf("request = %+v", req)
	}
	if !slices.Equal(req.Platforms, []platform.Platform{platform.ARM64, platform.AMD64}) {
		t.Errorf("platforms = %v", req.Platforms)
	}
	want := []buildreq.Secret{{ID: "empty", Value: []byte{}}, {ID: "tok", Value: []byte("s3cret")}}
	if len(req.Secrets) != 2 || req.Secrets[0].ID != want[0].ID || req.Secrets[0].Value == nil ||
		req.Secrets[1].ID != want[1].ID || string(req.Secrets[1].Value) != "s3cret" {
		t.Errorf("secrets = %+v, want %+v", req.Secrets, want)
	}
	if err := req.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}
}
