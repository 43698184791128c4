package engine

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/internal/buildreq"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/kilntest"
	"github.com/kiln-dev/kiln/internal/platform"
)

// A typed request, as bake, the runner and the SDK make it.
func TestPrepareTypedRequest(t *testing.T) {
	ctxDir := kilntest.Context(t)
	secretFile := filepath.Join(t.TempDir(), "tok")
	kilntest.WriteFile(t, secretFile, "from-file")
	r, err := Prepare(buildreq.Request{
		Context:       buildreq.Context{Dir: ctxDir},
		Dockerfile:    buildreq.Dockerfile{Inline: []byte("FROM busybox\n")},
		Tags:          []string{"app:1"},
		Platforms:     []platform.Platform{platform.ARM64},
		Outputs:       []buildreq.Output{{Type: buildreq.OutputImage}},
		CacheTo:       []buildreq.Cache{{Type: "gha", Attrs: map[string]string{"scope": "main"}}},
		Secrets:       []buildreq.Secret{{ID: "v", Value: []byte("in-memory")}, {ID: "f", Src: secretFile}},
		NamedContexts: map[string]buildreq.NamedContext{"base": {Dir: ctxDir}},
	}, IO{Progress: "quiet"})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if dt, _ := os.ReadFile(r.DockerfilePath()); string(dt) != "FROM busybox\n" || r.ContextDir() != ctxDir {
		t.Errorf("dockerfile %q context %s", dt, r.ContextDir())
	}
	if r.outputs[0].Attrs["name"] != "app:1" || r.Platform() != platform.ARM64 || r.FrontendAttrs()["context:base"] != "local:base" {
		t.Errorf("outputs %+v platform %q attrs %v", r.outputs, r.Platform(), r.FrontendAttrs())
	}
	if w := r.Warnings(); len(w) != 1 || w[0] != "--cache-to type=gha,scope=main: ignored: the project's builder cache is persistent" {
		t.Errorf("warnings %q", w)
	}
	if string(r.secretValues["v"]) != "in-memory" || len(r.secrets) != 1 || r.secrets[0].FilePath != secretFile {
		t.Errorf("secrets %v values %v", r.secrets, r.secretValues)
	}
	if _, err := r.secretProvider(); err != nil {
		t.Errorf("secret provider: %v", err)
	}
	// On the server, secrets are values only: never a file or variable of
	// the server's.
	r.ServerSide()
	if _, err := r.secretProvider(); !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), `secret "f"`) {
		t.Errorf("server-side file secret: %v", err)
	}

	// Validation and the inputs on disk.
	for _, tc := range []struct {
		req  buildreq.Request
		want string
	}{
		{buildreq.Request{}, "build context"},
		{buildreq.Request{Context: buildreq.Context{Dir: ctxDir}, Secrets: []buildreq.Secret{{ID: "x", Src: "/nonexistent/kiln"}}}, `secret "x"`},
		{buildreq.Request{Context: buildreq.Context{Dir: ctxDir}, NamedContexts: map[string]buildreq.NamedContext{"b": {Dir: "/nonexistent/kiln"}}}, "no such directory"},
		{buildreq.Request{Context: buildreq.Context{Dir: ctxDir}, Outputs: []buildreq.Output{{Type: buildreq.OutputTar, Dest: "-"}}}, "needs a stdout"},
	} {
		r, err := Prepare(tc.req, IO{})
		if err == nil {
			r.Close()
		}
		if !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Prepare(%+v) = %v, want an invalid-argument error containing %q", tc.req, err, tc.want)
		}
	}
}
