package engine

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/kilntest"
	"github.com/kiln-dev/kiln/internal/steps"
	"github.com/kiln-dev/kiln/internal/testenv"
	"github.com/moby/buildkit/client"
)

// startBuildkitd runs the buildkitd built at <module>/bin/buildkitd (or
// $KILN_BUILDKITD) as root on a temporary state dir and returns a client
// connected to it through Dial. Without the binary the test fails, unless
// KILN_SKIP_MISSING=1.
func startBuildkitd(t *testing.T) *client.Client {
	t.Helper()
	testenv.RequireRoot(t, "the integration test's rootful buildkitd")
	bin := os.Getenv("KILN_BUILDKITD")
	if bin == "" {
		bin = testenv.Bin(t, "buildkitd")
	}
	if _, err := exec.LookPath("runc"); err != nil {
		t.Fatalf("runc not in PATH: %v", err)
	}

	// A short path: unix socket paths are limited to ~108 bytes.
	sockDir, err := os.MkdirTemp("/tmp", "kbk")
	if err != nil {
		t.Fatal(err)
	}
	// Not t.TempDir: buildkitd may leave mounts behind if killed hard,
	// which would make the automatic removal fail the test.
	stateDir, err := os.MkdirTemp("", "kiln-buildkitd-")
	if err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(stateDir, "buildkitd.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	sock := "unix://" + filepath.Join(sockDir, "bk.sock")
	cmd := exec.Command(bin,
		"--root", filepath.Join(stateDir, "root"),
		"--addr", sock,
		"--oci-worker-snapshotter", "overlayfs",
		"--containerd-worker=false",
	)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting buildkitd: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		logFile.Close()
		if t.Failed() {
			if dt, err := os.ReadFile(logPath); err == nil {
				if len(dt) > 8000 {
					dt = dt[len(dt)-8000:]
				}
				t.Logf("buildkitd log (tail):\n%s", dt)
			}
		}
		_ = os.RemoveAll(sockDir)
		_ = os.RemoveAll(stateDir)
	})

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for {
		select {
		case <-exited:
			t.Fatal("buildkitd exited during startup")
		default:
		}
		attempt, cancelAttempt := context.WithTimeout(ctx, 5*time.Second)
		c, err := Dial(attempt, Connection{Endpoint: sock})
		cancelAttempt()
		if err == nil {
			t.Cleanup(func() { c.Close() })
			return c
		}
		if ctx.Err() != nil {
			t.Fatalf("buildkitd did not become ready: %v", err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// build prepares o and solves it, returning the response, the rendered
// progress and the recorded steps.
func build(t *testing.T, c *client.Client, o Options) (*client.SolveResponse, string, []steps.Step, error) {
	t.Helper()
	r, err := prepareOptions(o)
	if err != nil {
		t.Fatalf("Prepare: %v", err)
	}
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var progress bytes.Buffer
	rec := steps.NewRecorder(false)
	resp, err := Solve(ctx, c, r, &progress, rec.Observe)
	return resp, progress.String(), rec.Steps(), err
}

func readOut(t *testing.T, p string) string {
	t.Helper()
	dt, err := os.ReadFile(p)
	if err != nil {
		t.Errorf("reading output: %v", err)
	}
	return string(dt)
}

const integrationDockerfile = `FROM scratch AS base
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
FROM base
ARG GREETING=hi
COPY hello.txt /hello.txt
RUN --mount=type=secret,id=tok cat /run/secrets/tok > /secret-copy && echo "$GREETING" > /greeting
COPY . /ctx/
`

func TestIntegrationBuild(t *testing.T) {
	c := startBuildkitd(t)

	busybox, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatalf("reading /bin/busybox (install busybox-static): %v", err)
	}
	ctxDir := t.TempDir()
	kilntest.WriteFile(t, filepath.Join(ctxDir, "Dockerfile"), integrationDockerfile)
	if err := os.WriteFile(filepath.Join(ctxDir, "busybox"), busybox, 0o755); err != nil {
		t.Fatal(err)
	}
	kilntest.WriteFile(t, filepath.Join(ctxDir, "hello.txt"), "hello from the context\n")
	kilntest.WriteFile(t, filepath.Join(ctxDir, "ignored.txt"), "must not be sent\n")
	kilntest.WriteFile(t, filepath.Join(ctxDir, "ignored-dir", "x"), "must not be sent\n")
	kilntest.WriteFile(t, filepath.Join(ctxDir, ".dockerignore"), "ignored.txt\nignored-dir\n")
	secretFile := filepath.Join(t.TempDir(), "tok")
	kilntest.WriteFile(t, secretFile, "s3cret-token")

	rootfs := filepath.Join(t.TempDir(), "rootfs")
	resp, progress, recorded, err := build(t, c, Options{
		ContextPath: ctxDir,
		BuildArgs:   []string{"GREETING=hello-kiln"},
		Secrets:     []string{"id=tok,src=" + secretFile},
		Outputs:     []string{"type=local,dest=" + rootfs},
		Progress:    "plain",
	})
	if err != nil {
		t.Fatalf("Solve: %v\nprogress:\n%s", err, progress)
	}
	if resp == nil {
		t.Fatal("nil response")
	}
	if got := readOut(t, filepath.Join(rootfs, "greeting")); got != "hello-kiln\n" {
		t.Errorf("/greeting = %q", got)
	}
	if got := readOut(t, filepath.Join(rootfs, "secret-copy")); got != "s3cret-token" {
		t.Errorf("/secret-copy = %q", got)
	}
	if got := readOut(t, filepath.Join(rootfs, "hello.txt")); got != "hello from the context\n" {
		t.Errorf("/hello.txt = %q", got)
	}
	if got := readOut(t, filepath.Join(rootfs, "ctx", "hello.txt")); got != "hello from the context\n" {
		t.Errorf("/ctx/hello.txt = %q", got)
	}
	for _, p := range []string{"ctx/ignored.txt", "ctx/ignored-dir"} {
		if _, err := os.Lstat(filepath.Join(rootfs, p)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("/%s was sent despite .dockerignore (err=%v)", p, err)
		}
	}
	if _, err := os.Lstat(filepath.Join(rootfs, "run", "secrets", "tok")); err == nil {
		t.Error("the secret leaked into the image")
	}
	if !strings.Contains(progress, "RUN --mount=type=secret,id=tok") {
		t.Errorf("plain progress does not show the RUN step:\n%s", progress)
	}
	var sawRun bool
	for _, s := range recorded {
		if strings.Contains(s.Name, "RUN --mount=type=secret") {
			sawRun = !s.Started.IsZero() && !s.Completed.IsZero() && s.Error == ""
		}
	}
	if !sawRun {
		t.Errorf("steps do not record the completed RUN step: %+v", recorded)
	}

	// A local directory passed as a named context works as a FROM base
	// (here: the rootfs just exported, which has no image config).
	t.Run("named context as base", func(t *testing.T) {
		dir := t.TempDir()
		kilntest.WriteFile(t, filepath.Join(dir, "Dockerfile"), "FROM rootfs\nRUN echo \"$PATH\" > /path-seen && cat /greeting > /named\n")
		out := filepath.Join(t.TempDir(), "out")
		_, progress, _, err := build(t, c, Options{
			ContextPath:   dir,
			BuildContexts: []string{"rootfs=" + rootfs},
			Outputs:       []string{out},
			Progress:      "plain",
		})
		if err != nil {
			t.Fatalf("Solve: %v\nprogress:\n%s", err, progress)
		}
		if got := readOut(t, filepath.Join(out, "named")); got != "hello-kiln\n" {
			t.Errorf("/named = %q", got)
		}
		t.Logf("PATH inside a RUN on a config-less base: %q", strings.TrimSpace(readOut(t, filepath.Join(out, "path-seen"))))
	})

	t.Run("failing RUN", func(t *testing.T) {
		dir := t.TempDir()
		kilntest.WriteFile(t, filepath.Join(dir, "Dockerfile"), "FROM rootfs\nRUN exit 3\n")
		_, progress, recorded, err := build(t, c, Options{
			ContextPath:   dir,
			BuildContexts: []string{"rootfs=" + rootfs},
			Progress:      "plain",
		})
		want := `process "/bin/sh -c exit 3" did not complete successfully: exit code: 3`
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("error = %v, want it to contain %q", err, want)
		}
		t.Logf("failing RUN error text: %q", err.Error())
		if !strings.Contains(progress, "ERROR") {
			t.Errorf("progress does not show the failing step:\n%s", progress)
		}
		var failed bool
		for _, s := range recorded {
			if strings.Contains(s.Name, "RUN exit 3") && s.Error != "" {
				failed = true
			}
		}
		if !failed {
			t.Errorf("no failed step recorded: %+v", recorded)
		}
	})

	t.Run("frontend errors", func(t *testing.T) {
		dir := t.TempDir()
		kilntest.WriteFile(t, filepath.Join(dir, "Dockerfile"), "FROMM scratch\n")
		_, _, _, err := build(t, c, Options{ContextPath: dir, Progress: "quiet"})
		if err == nil || !strings.Contains(err.Error(), "unknown instruction") {
			t.Errorf("parse error = %v", err)
		} else {
			t.Logf("parse error text: %q", err.Error())
		}
		kilntest.WriteFile(t, filepath.Join(dir, "Dockerfile"), "FROM scratch AS a\n")
		_, _, _, err = build(t, c, Options{ContextPath: dir, Target: "nope", Progress: "quiet"})
		if err == nil || !strings.Contains(err.Error(), `target stage "nope" could not be found`) {
			t.Errorf("target error = %v", err)
		} else {
			t.Logf("missing target error text: %q", err.Error())
		}
	})

	t.Run("oci and tar outputs", func(t *testing.T) {
		dir := t.TempDir()
		kilntest.WriteFile(t, filepath.Join(dir, "Dockerfile"), "FROM scratch\nCOPY f /f\n")
		kilntest.WriteFile(t, filepath.Join(dir, "f"), "content\n")
		ociPath := filepath.Join(t.TempDir(), "sub", "img.tar")
		resp, progress, _, err := build(t, c, Options{
			ContextPath: dir,
			Tags:        []string{"kiln.test/app:1"},
			Outputs:     []string{"type=oci,dest=" + ociPath},
			Progress:    "rawjson",
		})
		if err != nil {
			t.Fatalf("Solve: %v", err)
		}
		if !strings.HasPrefix(strings.TrimSpace(progress), "{") {
			t.Errorf("rawjson progress is not JSON: %.200s", progress)
		}
		if names := tarNames(t, ociPath); !names["index.json"] || !names["oci-layout"] {
			t.Errorf("oci archive entries: %v", names)
		}
		iid := filepath.Join(t.TempDir(), "iid")
		if err := WriteIIDFile(iid, resp); err != nil {
			t.Fatalf("WriteIIDFile: %v (response %v)", err, resp.ExporterResponse)
		}
		if got := readOut(t, iid); !strings.HasPrefix(got, "sha256:") {
			t.Errorf("iid = %q", got)
		}
		meta := filepath.Join(t.TempDir(), "meta.json")
		if err := WriteMetadataFile(meta, resp); err != nil {
			t.Fatal(err)
		}
		if got := readOut(t, meta); !strings.Contains(got, `"containerimage.descriptor": {`) {
			t.Errorf("metadata:\n%s", got)
		}

		var stdout bytes.Buffer
		r, err := prepareOptions(Options{ContextPath: dir, Outputs: []string{"-"}, Stdout: &stdout, Progress: "quiet"})
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if _, err := Solve(ctx, c, r, io.Discard, nil); err != nil {
			t.Fatalf("Solve: %v", err)
		}
		if names := tarEntries(t, &stdout); names["f"] != "content\n" {
			t.Errorf("tar on stdout: %v", names)
		}
	})

	t.Run("stdin gzip tar context", func(t *testing.T) {
		var buf bytes.Buffer
		zw := gzip.NewWriter(&buf)
		zw.Write(makeTar(t, []tarEntry{
			{name: "Dockerfile", body: "FROM scratch\nCOPY . /\n"},
			{name: ".dockerignore", body: "skip\n"},
			{name: "keep", body: "kept\n"},
			{name: "skip", body: "skipped\n"},
		}))
		zw.Close()
		out := filepath.Join(t.TempDir(), "out")
		_, progress, _, err := build(t, c, Options{ContextPath: "-", Stdin: &buf, Outputs: []string{"type=local,dest=" + out}, Progress: "plain"})
		if err != nil {
			t.Fatalf("Solve: %v\n%s", err, progress)
		}
		if got := readOut(t, filepath.Join(out, "keep")); got != "kept\n" {
			t.Errorf("keep = %q", got)
		}
		if _, err := os.Stat(filepath.Join(out, "skip")); err == nil {
			t.Error(".dockerignore not applied to a stdin context")
		}
	})

	t.Run("canceled", func(t *testing.T) {
		dir := t.TempDir()
		kilntest.WriteFile(t, filepath.Join(dir, "Dockerfile"), "FROM rootfs\nRUN sleep 60\n")
		r, err := prepareOptions(Options{ContextPath: dir, BuildContexts: []string{"rootfs=" + rootfs}, Progress: "quiet"})
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		start := time.Now()
		_, err = Solve(ctx, c, r, io.Discard, nil)
		if !errors.Is(err, errdefs.ErrCanceled) {
			t.Errorf("error = %v, want a cancellation", err)
		}
		if d := time.Since(start); d > 30*time.Second {
			t.Errorf("cancellation took %s", d)
		}
	})
}

func tarNames(t *testing.T, p string) map[string]bool {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	names := map[string]bool{}
	for n := range tarEntries(t, f) {
		names[n] = true
	}
	return names
}

func tarEntries(t *testing.T, r io.Reader) map[string]string {
	t.Helper()
	out := map[string]string{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("reading tar: %v", err)
		}
		dt, _ := io.ReadAll(tr)
		out[h.Name] = string(dt)
	}
}
