package e2e

// Builder faults, from the user's side: a builder that dies, stops, runs
// out of disk or waits on a client that does not answer. Each ends the
// build with one clear message, the same on the client and in the record,
// naming no server path, and leaves no process, mount or temporary
// directory behind.

import (
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"buf.build/gen/go/depot/api/connectrpc/go/depot/buildkit/v1/buildkitv1connect"
	buildkitv1 "buf.build/gen/go/depot/api/protocolbuffers/go/depot/buildkit/v1"

	kilnv1 "github.com/kiln-dev/kiln/gen/kiln/v1"
)

// builderBuild is a `kiln build` running in the background.
type builderBuild struct {
	cmd    *exec.Cmd
	stderr *syncBuffer
	done   chan error
}

// builderStartBuild starts `kiln build --progress plain` of dir in project
// with extra args, in the background.
func builderStartBuild(t *testing.T, s *server, proj, dir string, args ...string) *builderBuild {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	cmd := exec.CommandContext(ctx, kilnBin, append([]string{"build", "--project", proj, "--progress", "plain"}, append(args, ".")...)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "KILN_API_URL="+s.URL, "KILN_TOKEN="+s.Token, "HOME="+t.TempDir())
	b := &builderBuild{cmd: cmd, stderr: &syncBuffer{}, done: make(chan error, 1)}
	cmd.Stderr = b.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { b.done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-b.done
	})
	return b
}

// wait returns the build's exit error, failing the test after d.
func (b *builderBuild) wait(t *testing.T, d time.Duration) error {
	t.Helper()
	select {
	case err := <-b.done:
		b.done <- err // for the cleanup
		return err
	case <-time.After(d):
		t.Fatalf("the build did not end within %s:\n%s", d, tail(b.stderr.String(), 3000))
		return nil
	}
}

// builderRecord is how the server recorded build id: its status and error.
func builderRecord(t *testing.T, s *server, id string) (kilnv1.BuildStatus, string) {
	t.Helper()
	res, err := s.sourceAPI().GetBuild(t.Context(), bearer(&kilnv1.GetBuildRequest{BuildId: id}, s.Token))
	if err != nil {
		t.Fatalf("GetBuild %s: %v", id, err)
	}
	return res.Msg.Build.GetStatus(), res.Msg.Build.GetError()
}

// builderAgreed checks that the build ended failed, and that the client
// printed the very error the server recorded, which contains want.
func builderAgreed(t *testing.T, s *server, proj, stderr, want string) {
	t.Helper()
	id := s.latestBuild(t, proj)
	var st kilnv1.BuildStatus
	var recorded string
	eventually(t, 15*time.Second, "the build to be recorded failed", func() bool {
		st, recorded = builderRecord(t, s, id)
		return st == kilnv1.BuildStatus_BUILD_STATUS_FAILED
	})
	if !strings.Contains(recorded, want) {
		t.Errorf("recorded error %q does not say %q", recorded, want)
	}
	if !strings.Contains(stderr, "kiln: build "+id+" failed: "+recorded) {
		t.Errorf("the client did not print the recorded error %q:\n%s", recorded, tail(stderr, 3000))
	}
	if strings.Contains(stderr, "error reading from server") {
		t.Errorf("the client shows the raw connection error:\n%s", tail(stderr, 3000))
	}
	noServerPath(t, s, "the client's output", stderr)
	noServerPath(t, s, "the recorded error", recorded)
}

// A builder stopped (SIGSTOP) mid-build: the client warns after 30 s
// without progress, the server kills and restarts the builder after the
// stall timeout, and the build fails with "stopped responding" on both
// sides. The next build works.
func TestBuilderStallIsRecycled(t *testing.T) {
	t.Parallel()
	s := startServer(t, "--builder-stall-timeout", "40s")
	proj := s.createProject(t, "stalled")
	marker := "sleep 173"
	dir := writeContext(t, map[string]string{"Dockerfile": baseStages + "FROM busybox\nRUN " + marker + "\n"})
	b := builderStartBuild(t, s, proj, dir)
	eventually(t, 90*time.Second, "the RUN step to start", func() bool { return len(processesNamed(marker)) > 0 })
	pid := s.signalBuilder(t, proj, syscall.SIGSTOP)
	stopped := time.Now()

	eventually(t, 45*time.Second, "the client's no-progress warning", func() bool {
		return strings.Contains(b.stderr.String(), "no progress from the builder for")
	})
	t.Logf("warned %s after the stop", time.Since(stopped).Round(time.Second))
	if err := b.wait(t, 60*time.Second); err == nil {
		t.Fatal("the build succeeded on a stopped builder")
	}
	took := time.Since(stopped)
	t.Logf("failed %s after the stop:\n%s", took.Round(time.Second), tail(b.stderr.String(), 800))
	if took < 35*time.Second {
		t.Errorf("the build failed %s after the stop, before the 40s stall timeout", took)
	}
	builderAgreed(t, s, proj, b.stderr.String(), "the builder for project "+proj+" (linux/amd64) stopped responding")

	// The stopped process is gone (killed, not left stopped), with its RUN.
	eventually(t, 10*time.Second, "the stopped buildkitd to be gone", func() bool {
		return syscall.Kill(pid, 0) != nil || isZombie(pid)
	})
	eventually(t, 10*time.Second, "the RUN process to be gone", func() bool { return len(processesNamed(marker)) == 0 })
	ok := writeContext(t, map[string]string{"Dockerfile": baseStages + "FROM busybox\nRUN echo after-stall\n"})
	s.mustKiln(t, ok, "build", "--project", proj, "--progress", "plain", ".")
	if now, _ := s.builderOf(t, proj); now == pid {
		t.Errorf("the builder was not restarted (pid %d)", pid)
	}
}

func isZombie(pid int) bool {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	return err == nil && strings.Contains(string(b), ") Z ")
}

// buildkitTempEntries lists what BuildKit made in dir (buildkit* and
// containerd-mount* temporary directories).
func buildkitTempEntries(dir string) map[string]bool {
	out := map[string]bool{}
	es, _ := os.ReadDir(dir)
	for _, e := range es {
		if strings.HasPrefix(e.Name(), "buildkit") || strings.HasPrefix(e.Name(), "containerd-mount") {
			out[e.Name()] = true
		}
	}
	return out
}

// A builder killed while it exports a big layer leaves nothing in the
// system temp directory (its temporary mounts live under its own
// directory), and the crash cleanup leaves no mount and no temporary
// directory under the builder's.
func TestBuilderCrashDuringExportLeavesNoTemp(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	proj := s.createProject(t, "export-crash")
	before := buildkitTempEntries(os.TempDir())
	// Random bytes: compressing them keeps the exporter busy for seconds.
	dir := writeContext(t, map[string]string{"Dockerfile": baseStages + "FROM busybox\nRUN head -c 150000000 /dev/urandom > /big\n"})
	out := filepath.Join(t.TempDir(), "image.tar")
	b := builderStartBuild(t, s, proj, dir, "-o", "type=oci,dest="+out)
	eventually(t, 3*time.Minute, "the export to start", func() bool {
		return strings.Contains(b.stderr.String(), "exporting layers")
	})
	pid, stateDir := s.builderOf(t, proj)
	mps := mountsUnder(stateDir)
	t.Logf("mounts under the builder dir at the kill: %v", mps)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := b.wait(t, 60*time.Second); err == nil {
		t.Log("the export finished before the kill took effect; the checks below still hold")
	} else {
		builderAgreed(t, s, proj, b.stderr.String(), "crashed during the build (signal 9)")
	}
	eventually(t, 30*time.Second, "the builder to be restarted", func() bool {
		for _, st := range s.builders(t) {
			if st.ProjectID == proj && st.PID != 0 && st.PID != pid && st.State == "ready" {
				return true
			}
		}
		return false
	})
	for name := range buildkitTempEntries(os.TempDir()) {
		if !before[name] {
			t.Errorf("a builder left %s in the system temp directory", filepath.Join(os.TempDir(), name))
		}
	}
	for _, m := range mountsUnder(os.TempDir()) {
		// Directly in it: other servers' data directories (this run's and
		// others') are under it too, with mounts of their own.
		if filepath.Dir(m) != filepath.Clean(os.TempDir()) {
			continue
		}
		if strings.HasPrefix(filepath.Base(m), "buildkit") || strings.HasPrefix(filepath.Base(m), "containerd-mount") {
			t.Errorf("a builder mount is left in the system temp directory: %s", m)
		}
	}
	for _, m := range mountsUnder(filepath.Join(stateDir, "tmp")) {
		t.Errorf("a mount is left in the builder's temp dir after the restart: %s", m)
	}
	if left := buildkitTempEntries(filepath.Join(stateDir, "tmp")); len(left) > 0 {
		t.Errorf("the dead run's temporary directories are left in the builder's temp dir: %v", left)
	}
	// The project builds again.
	ok := writeContext(t, map[string]string{"Dockerfile": baseStages + "FROM busybox\nRUN echo after-export-crash\n"})
	s.mustKiln(t, ok, "build", "--project", proj, "--progress", "plain", ".")
}

// A builder that runs out of disk (BuildKit stays wedged until restarted)
// is recycled by kiln once its build ended; with space again, the next
// build works without anyone restarting anything. The error the user saw
// names no server path (BuildKit's own names the builder's directories).
func TestBuilderOutOfDiskIsRecycled(t *testing.T) {
	t.Parallel()
	s := startServerOnDisk(t, 512<<20)
	proj := s.createProject(t, "full")
	warm := writeContext(t, map[string]string{"Dockerfile": baseStages + "FROM busybox\nRUN echo warm > /warm\n"})
	s.mustKiln(t, warm, "build", "--project", proj, "--progress", "plain", ".")
	pid, _ := s.builderOf(t, proj)

	// 200 MB left: the RUN's 120 MB layer fits, its export to the
	// content store (random bytes do not compress) does not.
	free := fillDiskLeaving(t, s.Data, 200<<20)
	dir := writeContext(t, map[string]string{"Dockerfile": baseStages + "FROM busybox\nRUN head -c 120000000 /dev/urandom > /big\n"})
	out := filepath.Join(t.TempDir(), "image.tar")
	r := s.kiln(t, dir, nil, "build", "--project", proj, "--progress", "plain", "-o", "type=oci,dest="+out, ".")
	free()
	if r.Err == nil {
		t.Fatalf("the export fit in 200 MB with its own 120 MB layer:\n%s", tail(r.Stderr, 2000))
	}
	t.Logf("out-of-disk build: %s", tail(r.Stderr, 600))
	if !strings.Contains(r.Stderr, "no space left on device") {
		t.Errorf("the build did not fail for lack of space:\n%s", tail(r.Stderr, 3000))
	}
	noServerPath(t, s, "the out-of-disk build's output", r.Stderr)
	eventually(t, 60*time.Second, "the wedged builder to be recycled", func() bool {
		b, _ := os.ReadFile(s.log)
		return strings.Contains(string(b), `msg="recycling builder" project=`+proj)
	})
	if b, _ := os.ReadFile(s.log); !strings.Contains(string(b), "builder out of disk space") {
		t.Error("the server log does not say the builder ran out of disk space")
	}
	ok := writeContext(t, map[string]string{"Dockerfile": baseStages + "FROM busybox\nRUN echo recovered > /ok\n"})
	s.mustKiln(t, ok, "build", "--project", proj, "--progress", "plain", ".")
	if now, _ := s.builderOf(t, proj); now == pid {
		t.Errorf("the builder that ran out of disk was not restarted (pid %d)", pid)
	}
}

// RELIABILITY 13: a client that stops answering the builder's session
// requests (here: its secret's source is a pipe nobody writes to) fails
// its build after a bounded time instead of hanging.
func TestBuildWithStalledSecretFails(t *testing.T) {
	t.Parallel()
	s := sharedServer(t)
	proj := s.createProject(t, "stalled-secret")
	fifo := filepath.Join(t.TempDir(), "token")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	dir := writeContext(t, map[string]string{"Dockerfile": baseStages + "FROM busybox\nRUN --mount=type=secret,id=token cat /run/secrets/token\n"})
	b := builderStartBuild(t, s, proj, dir, "--secret", "id=token,src="+fifo)
	start := time.Now()
	err := b.wait(t, 2*time.Minute)
	if err == nil {
		t.Fatal("the build succeeded without its secret")
	}
	t.Logf("failed after %s:\n%s", time.Since(start).Round(time.Second), tail(b.stderr.String(), 800))
	if !strings.Contains(b.stderr.String(), `secret "token": reading its source did not finish within`) {
		t.Errorf("the failure does not name the stalled secret:\n%s", tail(b.stderr.String(), 3000))
	}
	noServerPath(t, s, "the client's output", b.stderr.String())
	id := s.latestBuild(t, proj)
	eventually(t, 15*time.Second, "the build to be recorded failed", func() bool {
		st, _ := builderRecord(t, s, id)
		return st == kilnv1.BuildStatus_BUILD_STATUS_FAILED
	})
}

// Row 8 (idle stop): a builder whose lease the control plane let go of
// while the build's client still has a connection open to it (here the
// client gave the lease back early, ReleaseEndpoint) is not stopped for
// idleness under it; it is once the connection closes.
func TestBuilderWithOpenConnectionIsNotIdleStopped(t *testing.T) {
	t.Parallel()
	s := startServer(t, "--builder-idle-timeout", "1s")
	ctx := t.Context()
	proj := s.createProject(t, "busy")
	id, tok := s.createBuild(t, proj, s.Token)
	conn := s.activeConnection(t, id, tok)
	c, err := gatewayConn(t, ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := listWorkers(ctx, c); err != nil {
		t.Fatal(err)
	}
	pid, _ := s.builderOf(t, proj)
	bk := buildkitv1connect.NewBuildKitServiceClient(http.DefaultClient, s.URL)
	if _, err := bk.ReleaseEndpoint(ctx, bearer(&buildkitv1.ReleaseEndpointRequest{BuildId: id, Platform: buildkitv1.Platform_PLATFORM_AMD64}, tok)); err != nil {
		t.Fatalf("ReleaseEndpoint: %v", err)
	}
	for _, b := range s.builders(t) {
		if b.ProjectID == proj && len(b.Leases) > 0 {
			t.Fatalf("the builder still holds a lease after ReleaseEndpoint: %+v", b)
		}
	}
	time.Sleep(4 * time.Second) // four idle timeouts
	if now, _ := s.builderOf(t, proj); now != pid {
		t.Fatalf("the builder was stopped under an open connection (pid %d, now %d)", pid, now)
	}
	if err := listWorkers(ctx, c); err != nil {
		t.Fatalf("the open connection stopped working: %v", err)
	}
	c.Close()
	eventually(t, 30*time.Second, "the idle builder to stop once the connection closed", func() bool {
		for _, b := range s.builders(t) {
			if b.ProjectID == proj && b.State != "stopped" {
				return false
			}
		}
		return true
	})
}
