package e2e

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	cliv1 "github.com/depot/depot-go/proto/depot/cli/v1"
)

// A client that stops reporting health has its build canceled and its
// builder released (then stopped when idle) within the timeout.
func TestAbandonedBuildIsCanceled(t *testing.T) {
	t.Parallel()
	s := startServer(t, "--health-timeout", "3s", "--builder-idle-timeout", "2s")
	proj := s.createProject(t, "abandoned")
	id, tok := s.createBuild(t, proj, s.Token)
	s.activeConnection(t, id, tok) // leases the builder, then goes silent
	leased := func() bool {
		for _, b := range s.builders(t) {
			if b.ProjectID == proj && len(b.Leases) > 0 {
				return true
			}
		}
		return false
	}
	if !leased() {
		t.Fatalf("the build holds no builder lease: %+v", s.builders(t))
	}
	eventually(t, 15*time.Second, "the silent build to be canceled", func() bool {
		return s.buildStatus(t, proj, id) == cliv1.BuildStatus_BUILD_STATUS_CANCELED
	})
	if leased() {
		t.Errorf("the canceled build still holds its builder")
	}
	eventually(t, 20*time.Second, "the idle builder to stop", func() bool {
		for _, b := range s.builders(t) {
			if b.ProjectID == proj && b.State != "stopped" {
				return false
			}
		}
		return true
	})
	// The client learns it: health and connection calls say the build is over.
	// Its build token died with it.
	_, err := s.api().GetBuildKitConnection(t.Context(), bearer(&cliv1.GetBuildKitConnectionRequest{BuildId: id}, tok))
	if connect.CodeOf(err) != connect.CodeUnauthenticated || !strings.Contains(err.Error(), "build has ended") {
		t.Errorf("GetBuildKitConnection after cancel: %v, want Unauthenticated saying the build has ended", err)
	}
}

// processesNamed lists PIDs whose command line is exactly cmdline.
func processesNamed(cmdline string) []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.TrimRight(strings.ReplaceAll(string(b), "\x00", " "), " ") == cmdline {
			pids = append(pids, pid)
		}
	}
	return pids
}

func mountsUnder(dir string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && strings.HasPrefix(fields[4], dir+"/") {
			out = append(out, fields[4])
		}
	}
	return out
}

// Killing a project's buildkitd mid-build fails that build quickly and
// clearly, leaves no orphaned process or mount, and the next build works.
func TestBuilderCrashMidBuild(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	proj := s.createProject(t, "crashy")
	other := s.createProject(t, "bystander")
	marker := "sleep 171"
	ctxDir := writeContext(t, map[string]string{"Dockerfile": baseStages + "FROM busybox\nRUN echo step-before > /before\nRUN " + marker + "\n"})
	okDir := writeContext(t, map[string]string{"Dockerfile": baseStages + "FROM busybox\nRUN echo fine > /fine\n"})
	s.mustKiln(t, okDir, "build", "--project", other, "--progress", "plain", ".")

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, kilnBin, "build", "--project", proj, "--progress", "plain", ".")
	cmd.Dir = ctxDir
	cmd.Env = append(os.Environ(), "KILN_API_URL="+s.URL, "KILN_TOKEN="+s.Token)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	eventually(t, 90*time.Second, "the RUN sleep step to start", func() bool { return len(processesNamed(marker)) > 0 })

	var pid int
	var stateDir string
	for _, b := range s.builders(t) {
		if b.ProjectID == proj {
			pid, stateDir = b.PID, b.StateDir
		}
	}
	if pid == 0 {
		t.Fatalf("no running builder for %s: %+v", proj, s.builders(t))
	}
	// The dead run's mounts (the RUN's rootfs, its network namespaces):
	// the restarted builder makes new ones of its own.
	leftovers := mountsUnder(stateDir)
	killed := time.Now()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err == nil {
			t.Fatalf("the build succeeded although its builder was killed")
		}
		t.Logf("build failed %s after the kill: %s", time.Since(killed).Round(time.Millisecond), tail(stderr.String(), 600))
		if time.Since(killed) > 15*time.Second {
			t.Errorf("the client took %s to notice its builder died", time.Since(killed))
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("the build did not fail within 30s of its builder dying:\n%s", tail(stderr.String(), 3000))
	}
	// The same clear message on the client and in the record, every time
	// (the client asks the server why its connection broke).
	builderAgreed(t, s, proj, stderr.String(), "the builder for project "+proj+" (linux/amd64) crashed during the build (signal 9); retry the build")
	eventually(t, 10*time.Second, "orphaned RUN processes to be gone", func() bool { return len(processesNamed(marker)) == 0 })
	if stateDir == "" {
		t.Fatalf("no state dir reported for the builder")
	}
	eventually(t, 10*time.Second, "the dead builder's mounts to be cleaned up", func() bool {
		now := mountsUnder(stateDir)
		return !slices.ContainsFunc(leftovers, func(m string) bool { return slices.Contains(now, m) })
	})

	// The next build of the project succeeds and reuses cache up to the failed step.
	fixed := writeContext(t, map[string]string{"Dockerfile": baseStages + "FROM busybox\nRUN echo step-before > /before\nRUN echo recovered > /after\n"})
	out := t.TempDir()
	s.mustKiln(t, fixed, "build", "--project", proj, "--progress", "plain", "-o", "type=local,dest="+out, ".")
	if b, _ := os.ReadFile(filepath.Join(out, "after")); string(b) != "recovered\n" {
		t.Errorf("build after the crash: /after = %q", b)
	}
	// The bystander project's builder was untouched.
	s.mustKiln(t, okDir, "build", "--project", other, "--progress", "plain", ".")
}
