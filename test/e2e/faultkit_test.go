package e2e

// The fault points of the fault suite: kill -9, pause and resume of
// `kiln serve` and of builders, and a data disk that fills up. Every fault
// test reaches for these rather than signalling processes itself, so each
// fault is injected the same way everywhere.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/build"
	"github.com/kiln-dev/kiln/internal/store"
)

// startServerOnDisk is startServer with kiln's data directory (database,
// registry, contexts, builders' state) on a tmpfs of size bytes, made for
// the test and unmounted after it.
func startServerOnDisk(t *testing.T, size int64, args ...string) *server {
	t.Helper()
	s, err := newServer(nil, args, ownPool)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+strconv.FormatInt(size, 10)+",mode=0700", "kiln-e2e-disk", s.Data).CombinedOutput(); err != nil {
		s.remove()
		t.Fatalf("mount a %d-byte tmpfs on %s: %v: %s", size, s.Data, err, out)
	}
	t.Cleanup(func() {
		s.stop(t)
		s.checkEnded(t)
		if t.Failed() {
			b, _ := os.ReadFile(s.log)
			t.Logf("kiln serve log:\n%s", tail(string(b), 12000))
		}
		// Lazily: a mount a test failed to clean up must not keep the
		// tmpfs (and the test's memory) around.
		if out, err := exec.Command("umount", "-l", s.Data).CombinedOutput(); err != nil {
			t.Errorf("unmount the test's tmpfs: %v: %s", err, out)
		}
		s.remove()
	})
	s.start(t)
	if err := s.readToken(); err != nil {
		t.Error(err)
	}
	return s
}

// fillDisk writes a file in dir until its file system has no space left
// and returns a function that frees the space again (also run when the
// test ends).
func fillDisk(t *testing.T, dir string) (free func()) {
	t.Helper()
	return fillDiskLeaving(t, dir, 0)
}

// fillDiskLeaving is fillDisk leaving about leave bytes free.
func fillDiskLeaving(t *testing.T, dir string, leave int64) (free func()) {
	t.Helper()
	p := filepath.Join(dir, "fill-"+strconv.Itoa(os.Getpid())+"-"+strconv.FormatInt(time.Now().UnixNano(), 36))
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 1<<20)
	for size := int64(len(chunk)); size > 0; {
		if left := freeBytes(t, dir) - leave; left < size {
			size = max(left, 0) // the last bytes, to the block
			if size == 0 {
				break
			}
		}
		if _, err := f.Write(chunk[:size]); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				f.Close()
				os.Remove(p)
				t.Fatalf("fill %s: %v", dir, err)
			}
			size /= 2
		}
	}
	f.Close()
	freed := false
	free = func() {
		if !freed {
			freed = true
			os.Remove(p)
		}
	}
	t.Cleanup(free)
	return free
}

// freeBytes is what dir's file system has left.
func freeBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bavail) * st.Bsize
}

// kill9 ends kiln serve with SIGKILL, as a crash or the OOM killer does:
// no shutdown runs. Its builders die with it (they are started with a
// parent-death signal). start brings it back on the same data.
func (s *server) kill9(t *testing.T) {
	t.Helper()
	if s.cmd == nil {
		t.Fatal("kill9: kiln serve is not running")
	}
	if err := s.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-s.exited
	s.cmd = nil
}

// pause stops kiln serve (SIGSTOP) until resume; nothing of it runs, its
// connections stay open.
func (s *server) pause(t *testing.T) {
	t.Helper()
	if err := s.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.cmd.Process.Signal(syscall.SIGCONT) })
}

func (s *server) resume(t *testing.T) {
	t.Helper()
	if err := s.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
}

// noServerPath fails the test if text, which a client was shown, names a
// path of the server: its data directory, a builder's files, the database.
func noServerPath(t *testing.T, s *server, what, text string) {
	t.Helper()
	for _, p := range []string{s.Data, "buildkitd.log", "/builders/", "kiln.db"} {
		if strings.Contains(text, p) {
			t.Errorf("%s names a server path (%q):\n%s", what, p, tail(text, 3000))
		}
	}
}

// syncBuffer is a bytes.Buffer safe to read while a process writes it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// pid is kiln serve's process id.
func (s *server) pid() int { return s.cmd.Process.Pid }

// builderOf is the running builder of project (its buildkitd's PID and its
// state directory), failing the test if it has none.
func (s *server) builderOf(t *testing.T, project string) (pid int, stateDir string) {
	t.Helper()
	for _, b := range s.builders(t) {
		if b.ProjectID == project && b.PID != 0 {
			return b.PID, b.StateDir
		}
	}
	t.Fatalf("no running builder for %s: %+v", project, s.builders(t))
	return 0, ""
}

// signalBuilder sends sig to project's buildkitd; a SIGSTOP is undone
// when the test ends.
func (s *server) signalBuilder(t *testing.T, project string, sig syscall.Signal) int {
	t.Helper()
	pid, _ := s.builderOf(t, project)
	if err := syscall.Kill(pid, sig); err != nil {
		t.Fatalf("signal %v to builder %d: %v", sig, pid, err)
	}
	if sig == syscall.SIGSTOP {
		t.Cleanup(func() { syscall.Kill(pid, syscall.SIGCONT) })
	}
	return pid
}

// openFDs counts the open file descriptors of process pid.
func openFDs(pid int) int {
	es, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	return len(es)
}

// rssBytes is the resident set size of process pid.
func rssBytes(pid int) int64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// leftBehind lists this run's builder processes (buildkitd, runc and what
// they ran), mounts and bridges, and BuildKit's temporary mounts in the
// system temp directory: what the suite checks after every server stopped.
func leftBehind() []string {
	var out []string
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		cwd, err := os.Readlink(filepath.Join("/proc", e.Name(), "cwd"))
		if err != nil || !strings.Contains(cwd, "/"+runTag) {
			continue
		}
		cmd, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		out = append(out, fmt.Sprintf("process %s (%s) in %s", e.Name(), strings.ReplaceAll(strings.TrimRight(string(cmd), "\x00"), "\x00", " "), cwd))
	}
	for _, m := range mountsUnder(os.TempDir()) {
		// BuildKit's own temporary mounts directly in the system temp
		// directory: no builder of any run may make them there.
		direct := filepath.Dir(m) == filepath.Clean(os.TempDir()) && strings.HasPrefix(filepath.Base(m), "buildkit")
		if strings.Contains(m, "/"+runTag) || direct {
			out = append(out, "mount "+m)
		}
	}
	// Builders' bridges in the pools this run's servers held.
	pools.Lock()
	used := slices.Clone(pools.used)
	pools.Unlock()
	ifaces, _ := net.Interfaces()
	for _, ifc := range ifaces {
		addrs, _ := ifc.Addrs()
		for _, a := range addrs {
			ipn, ok := a.(*net.IPNet)
			if !ok {
				continue
			}
			ip, _ := netip.AddrFromSlice(ipn.IP)
			if slices.ContainsFunc(used, func(p netip.Prefix) bool { return p.Contains(ip.Unmap()) }) {
				out = append(out, fmt.Sprintf("network interface %s (%s)", ifc.Name, ipn))
			}
		}
	}
	return out
}

// runningBuilds lists the builds s's database still records as running
// although they held a builder, read after s stopped: the suite asserts
// there are none, so that every fault leaves every build that ran ended
// with a status kiln can explain. (A build no client ever connected to a
// builder waits for its client across restarts; nothing of it ran.)
func (s *server) runningBuilds() ([]string, error) {
	st, err := store.OpenSQLite(context.Background(), filepath.Join(s.Data, "kiln.db"))
	if err != nil {
		return nil, err
	}
	defer st.Close()
	running, err := st.ListBuildsByStatus(context.Background(), build.Running)
	var out []string
	for _, b := range running {
		if b.Platforms == "" {
			continue
		}
		out = append(out, fmt.Sprintf("%s (%s build of project %s, created %s)", b.ID, b.Kind, b.ProjectID, b.CreatedAt.Format(time.TimeOnly)))
	}
	return out, err
}

// checkEnded fails t if s (stopped) left a build running.
func (s *server) checkEnded(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(filepath.Join(s.Data, "kiln.db")); err != nil {
		return
	}
	running, err := s.runningBuilds()
	if err != nil {
		t.Errorf("read the builds kiln serve left: %v", err)
	}
	if len(running) > 0 {
		t.Errorf("kiln serve stopped with builds still recorded running:\n  %s", strings.Join(running, "\n  "))
	}
}
