package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	cliv1 "github.com/depot/depot-go/proto/depot/cli/v1"

	"github.com/kiln-dev/kiln/internal/engine"
)

const appDockerfile = baseStages + `
FROM busybox AS build
ARG GREETING=hi
COPY hello.txt /src/hello.txt
RUN --mount=type=secret,id=tok cat /run/secrets/tok | sha256sum | cut -c1-16 > /src/secret.sha && echo "$GREETING" > /src/greeting

FROM busybox AS final
COPY --from=build /src /app
RUN cat /app/greeting /app/hello.txt > /app/combined

FROM busybox AS broken
RUN exit 3
`

func TestBuildOutputsCacheAndIsolation(t *testing.T) {
	t.Parallel()
	s := sharedServer(t)
	projA := s.createProject(t, "app-a")
	projB := s.createProject(t, "app-b")
	ctxDir := writeContext(t, map[string]string{
		"Dockerfile":    appDockerfile,
		"hello.txt":     "hello from the context\n",
		"ignored.txt":   "must not be sent\n",
		".dockerignore": "ignored.txt\n",
	})
	secret := filepath.Join(t.TempDir(), "tok")
	os.WriteFile(secret, []byte("s3cr3t-value"), 0o600)
	sum := sha256.Sum256([]byte("s3cr3t-value"))
	wantSecret := hex.EncodeToString(sum[:])[:16]
	out := t.TempDir()
	common := []string{"build", "--target", "final", "--build-arg", "GREETING=hello kiln", "--secret", "id=tok,src=" + secret, "--progress", "rawjson"}

	// type=local, first (cold) build in project A.
	first := s.mustKiln(t, ctxDir, append(common, "--project", projA, "-o", "type=local,dest="+filepath.Join(out, "local"), ".")...)
	got, _ := os.ReadFile(filepath.Join(out, "local", "app", "combined"))
	if string(got) != "hello kiln\nhello from the context\n" {
		t.Errorf("local output /app/combined = %q", got)
	}
	if got, _ := os.ReadFile(filepath.Join(out, "local", "app", "secret.sha")); strings.TrimSpace(string(got)) != wantSecret {
		t.Errorf("secret mount: sha prefix %q, want %q", got, wantSecret)
	}
	if _, err := os.Stat(filepath.Join(out, "local", "ignored.txt")); err == nil {
		t.Errorf(".dockerignore'd file reached the image")
	}
	if n := cachedCount(dockerfileSteps(t, first.Stdout+first.Stderr)); n != 0 {
		t.Errorf("cold build of a new project had %d cached steps", n)
	}

	// type=oci, the same build again: every step CACHED, and faster.
	ociPath := filepath.Join(out, "img.tar")
	second := s.mustKiln(t, ctxDir, append(common, "--project", projA, "-o", "type=oci,dest="+ociPath, ".")...)
	steps := dockerfileSteps(t, second.Stdout+second.Stderr)
	for name, v := range steps {
		if !v.Cached {
			t.Errorf("second build: step %q not CACHED", name)
		}
	}
	if second.Took >= first.Took {
		t.Errorf("cached rebuild took %s, not faster than the first build's %s", second.Took, first.Took)
	}
	if got := ociFile(t, ociPath, "app/combined"); got != "hello kiln\nhello from the context\n" {
		t.Errorf("oci output /app/combined = %q", got)
	}
	// The server stored the steps the client streamed, cached ones marked.
	stored := 0
	for _, st := range s.steps(t, projA, s.latestBuild(t, projA)) {
		if strings.HasPrefix(st.Name, "[") && !strings.HasPrefix(st.Name, "[internal]") {
			stored++
			if st.CacheState.String() != "CACHE_STATE_CACHED" {
				t.Errorf("stored step %q: %v, want CACHED", st.Name, st.CacheState)
			}
		}
	}
	if stored != len(steps) {
		t.Errorf("server stored %d Dockerfile steps, the client saw %d", stored, len(steps))
	}
	// The plain progress shows CACHED like buildx.
	plain := s.mustKiln(t, ctxDir, "build", "--project", projA, "--target", "final", "--build-arg", "GREETING=hello kiln",
		"--secret", "id=tok,src="+secret, "--progress", "plain", ".")
	if !strings.Contains(plain.Stderr, "CACHED") {
		t.Errorf("plain progress of a cached build shows no CACHED:\n%s", tail(plain.Stderr, 3000))
	}

	// Isolation: project B's first build of the same Dockerfile gets no cache hit from A.
	b := s.mustKiln(t, ctxDir, append(common, "--project", projB, "-o", "type=local,dest="+filepath.Join(out, "b"), ".")...)
	if n := cachedCount(dockerfileSteps(t, b.Stdout+b.Stderr)); n != 0 {
		t.Errorf("project B got %d cache hits from project A's builds", n)
	}

	// The server recorded the steps the client reported, cached ones marked.
	if st := s.buildStatusByIndex(t, projA, 0); st != cliv1.BuildStatus_BUILD_STATUS_FINISHED {
		t.Errorf("latest build of A: status %v, want FINISHED", st)
	}
}

// buildStatusByIndex returns the status of the i-th newest build.
func (s *server) buildStatusByIndex(t *testing.T, project string, i int) cliv1.BuildStatus {
	t.Helper()
	res, err := s.api().ListBuilds(t.Context(), bearer(&cliv1.ListBuildsRequest{ProjectId: project}, s.Token))
	if err != nil || len(res.Msg.Builds) <= i {
		t.Fatalf("ListBuilds(%s): %v (%d builds)", project, err, len(res.Msg.Builds))
	}
	return res.Msg.Builds[i].Status
}

func TestIsolationFromTheAttackersSide(t *testing.T) {
	t.Parallel()
	s := sharedServer(t)
	projA := s.createProject(t, "victim")
	projB := s.createProject(t, "attacker")

	// A cache mount written in A is not visible in B.
	df := baseStages + `
FROM busybox
ARG WHO
RUN --mount=type=cache,target=/cache,id=shared (cat /cache/marker 2>/dev/null || echo none) > /seen && echo "$WHO-was-here" > /cache/marker
RUN --mount=type=secret,id=tok,required=false (cat /run/secrets/tok 2>/dev/null || echo nosecret) > /secret-seen
`
	ctxDir := writeContext(t, map[string]string{"Dockerfile": df})
	secret := filepath.Join(t.TempDir(), "tok")
	os.WriteFile(secret, []byte("A-private"), 0o600)
	out := t.TempDir()
	build := func(project, who, dest string, extra ...string) {
		args := append([]string{"build", "--project", project, "--build-arg", "WHO=" + who, "--progress", "plain", "-o", "type=local,dest=" + dest}, extra...)
		s.mustKiln(t, ctxDir, append(args, ".")...)
	}
	build(projA, "A", filepath.Join(out, "a1"), "--secret", "id=tok,src="+secret)
	build(projA, "A2", filepath.Join(out, "a2"))
	if got, _ := os.ReadFile(filepath.Join(out, "a2", "seen")); strings.TrimSpace(string(got)) != "A-was-here" {
		t.Fatalf("control: A's second build should see A's cache mount, saw %q", got)
	}
	build(projB, "B", filepath.Join(out, "b"))
	if got, _ := os.ReadFile(filepath.Join(out, "b", "seen")); strings.TrimSpace(string(got)) != "none" {
		t.Errorf("B's build read A's cache mount: %q", got)
	}
	if got, _ := os.ReadFile(filepath.Join(out, "b", "secret-seen")); strings.TrimSpace(string(got)) != "nosecret" {
		t.Errorf("B's build read a secret: %q", got)
	}

	// Tokens: A's build token reaches only A's build.
	buildA, tokA := s.createBuild(t, projA, s.Token)
	buildB, tokB := s.createBuild(t, projB, s.Token)
	api := s.api()
	ctx := t.Context()
	// B's build answers as a missing one would (no existence oracle).
	_, err := api.GetBuildKitConnection(ctx, bearer(&cliv1.GetBuildKitConnectionRequest{BuildId: buildB}, tokA))
	if code := connect.CodeOf(err); code != connect.CodeNotFound {
		t.Errorf("A's build token on B's build: %v, want NotFound", err)
	}
	_, err = api.FinishBuild(ctx, bearer(&cliv1.FinishBuildRequest{BuildId: buildB}, tokA))
	if code := connect.CodeOf(err); code != connect.CodeNotFound {
		t.Errorf("A's build token finishing B's build: %v, want NotFound", err)
	}
	_, err = api.CreateBuild(ctx, bearer(&cliv1.CreateBuildRequest{ProjectId: projA}, tokA))
	if code := connect.CodeOf(err); code != connect.CodePermissionDenied {
		t.Errorf("build token creating a build: %v, want PermissionDenied", err)
	}
	_, err = api.ListBuilds(ctx, bearer(&cliv1.ListBuildsRequest{ProjectId: projA}, tokA))
	if code := connect.CodeOf(err); code != connect.CodePermissionDenied {
		t.Errorf("build token listing builds: %v, want PermissionDenied", err)
	}
	for _, args := range [][]string{{"projects", "list"}, {"projects", "get", projA}, {"projects", "get", projB},
		{"projects", "create", "x"}, {"projects", "delete", projB}, {"projects", "update", projA, "--name", "pwned"}} {
		r := s.kiln(t, t.TempDir(), []string{"KILN_TOKEN=" + tokA}, args...)
		if r.Err == nil || !strings.Contains(r.Stderr, "denied") && !strings.Contains(r.Stderr, "build token") && !strings.Contains(r.Stderr, "organization token") {
			t.Errorf("build token: kiln %v: err=%v stderr=%q, want a permission error", args, r.Err, r.Stderr)
		}
	}

	// A client certificate issued for A is refused by B's builder.
	connA := s.activeConnection(t, buildA, tokA)
	connB := s.activeConnection(t, buildB, tokB)
	dial := func(cert, key string) error {
		ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		c, err := engine.Dial(ctx, engine.Connection{Endpoint: connB.Endpoint, ServerName: connB.ServerName,
			CertPEM: cert, KeyPEM: key, CACertPEM: connB.CaCert.Cert})
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.ListWorkers(ctx)
		return err
	}
	if err := dial(connB.Cert.Cert, connB.Cert.Key); err != nil {
		t.Fatalf("control: B's own certificate refused by B's builder: %v", err)
	}
	if err := dial(connA.Cert.Cert, connA.Cert.Key); err == nil {
		t.Errorf("B's builder accepted a client certificate issued for project A")
	}
	if connA.ServerName == connB.ServerName {
		t.Errorf("projects A and B share a builder name %s", connA.ServerName)
	}
	for _, b := range [][2]string{{buildA, tokA}, {buildB, tokB}} {
		api.FinishBuild(ctx, bearer(&cliv1.FinishBuildRequest{BuildId: b[0]}, b[1]))
	}
}
