package engine

import (
	"os"
	"testing"

	"github.com/kiln-dev/kiln/internal/buildreq"
)

// A git context is a frontend attribute, not a session mount: nothing of
// it is read or sent here.
func TestPrepareGitContext(t *testing.T) {
	const url = "https://example.com/org/app.git#v1:web"
	r, err := Prepare(buildreq.Request{
		Context:    buildreq.Context{Git: url},
		Dockerfile: buildreq.Dockerfile{Path: "docker/Dockerfile"},
		Args:       map[string]string{"BUILDKIT_CONTEXT_KEEP_GIT_DIR": "1"},
		Secrets:    []buildreq.Secret{{ID: "GIT_AUTH_TOKEN.example.com", Value: []byte("tok")}},
	}, IO{Progress: "quiet"})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	attrs := r.FrontendAttrs()
	if attrs["context"] != url || attrs["filename"] != "docker/Dockerfile" || attrs["build-arg:BUILDKIT_CONTEXT_KEEP_GIT_DIR"] != "1" {
		t.Errorf("frontend attrs %v", attrs)
	}
	if len(r.locals) != 0 || r.GitContext() != url || r.GitCommit() != "" {
		t.Errorf("locals %v git %q commit %q", r.locals, r.GitContext(), r.GitCommit())
	}
	if got := r.gitCredential(); got != "GIT_AUTH_TOKEN.example.com" {
		t.Errorf("gitCredential = %q", got)
	}

	// -f -: the Dockerfile is sent, the context still fetched.
	r2, err := Prepare(buildreq.Request{Context: buildreq.Context{Git: url}, Dockerfile: buildreq.Dockerfile{Inline: []byte("FROM scratch\n")}}, IO{})
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	if dt, _ := os.ReadFile(r2.DockerfilePath()); string(dt) != "FROM scratch\n" || r2.FrontendAttrs()["dockerfilekey"] != mountDockerfile || r2.locals[mountContext] != "" {
		t.Errorf("inline Dockerfile: %q attrs %v locals %v", dt, r2.FrontendAttrs(), r2.locals)
	}
}

func TestPinGitURL(t *testing.T) {
	const sha = "0123456789abcdef0123456789abcdef01234567"
	for in, want := range map[string]string{
		"https://h/r.git#main:app":          "https://h/r.git?checksum=" + sha + "#main:app",
		"https://h/r.git":                   "https://h/r.git?checksum=" + sha,
		"https://h/r.git?checksum=abc#main": "https://h/r.git?checksum=abc#main",
		"git@github.com:org/r.git#main":     "git@github.com:org/r.git#main",
		"ssh://git@h/r.git?subdir=x#v1":     "ssh://git@h/r.git?checksum=" + sha + "&subdir=x#v1",
	} {
		if got := pinGitURL(in, sha); got != want {
			t.Errorf("pinGitURL(%s) = %s; want %s", in, got, want)
		}
	}
}
