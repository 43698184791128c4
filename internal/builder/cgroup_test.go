package builder

import (
	"context"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/builder/spec"
	"github.com/kiln-dev/kiln/internal/pki"
	"github.com/kiln-dev/kiln/internal/testenv"
)

// These tests use the machine's real cgroups (v1 or v2, whichever it has),
// as root.

func needCgroups(t *testing.T) cgroupSystem {
	t.Helper()
	testenv.RequireRoot(t, "creating cgroups")
	c := detectCgroups()
	if c.version == cgroupNone {
		t.Fatal("no usable cgroup hierarchy on this machine")
	}
	return c
}

// A process that outgrows a cgroup's limit is OOM-killed inside it, and the
// reading says so; the cgroup is removed once its processes are gone.
func TestCgroupLimitOOMKill(t *testing.T) {
	c := needCgroups(t)
	rel := "/kiln-test/" + strconv.Itoa(os.Getpid())
	t.Cleanup(func() { _ = c.remove("/kiln-test/" + strconv.Itoa(os.Getpid())); _ = c.remove("/kiln-test") })
	const limit = 32 << 20
	if err := c.create(rel, limit); err != nil {
		t.Fatal(err)
	}
	u, err := c.read(rel)
	if err != nil {
		t.Fatal(err)
	}
	if u.MemoryLimit != limit || u.OOMKills != 0 {
		t.Fatalf("fresh cgroup: %+v", u)
	}
	w, err := c.watchOOM(rel)
	if err != nil {
		t.Fatal(err)
	}
	defer w.close()
	// tail keeps everything after the last newline, and /dev/zero has none:
	// it holds all 128 MiB.
	cmd := exec.Command("sh", "-c", "sleep 0.3; head -c 128m /dev/zero | tail; echo survived")
	out := &strings.Builder{}
	cmd.Stdout = out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if err := c.enter(rel, cmd.Process.Pid); err != nil {
		_ = cmd.Process.Kill()
		t.Fatal(err)
	}
	if pids := c.pids(rel); len(pids) == 0 {
		t.Errorf("pids of the cgroup: none, want the shell")
	}
	_ = cmd.Wait()
	u, err = c.read(rel)
	if err != nil {
		t.Fatal(err)
	}
	if u.OOMKills == 0 {
		t.Fatalf("no OOM kill counted after allocating 128 MiB under a 32 MiB limit: %+v (output %q)", u, out)
	}
	if u.CPUNanos == 0 || u.MemoryPeak == 0 {
		t.Errorf("reading after work: %+v, want CPU time and a memory peak", u)
	}
	if u.MemoryPeak > limit {
		t.Errorf("memory peak %d over the limit %d", u.MemoryPeak, limit)
	}
	// Under v1 the kill is counted in the victim's cgroup only; once that
	// is gone (as a RUN step's is with its container), the notification
	// still says it happened.
	if c.version == cgroupV1 {
		if w.count() == 0 {
			t.Errorf("no OOM notification")
		}
		if err := os.Remove(filepath.Join(c.path("memory", rel), "buildkitd")); err != nil {
			t.Fatal(err)
		}
	}
	w.close()
	if err := c.remove(rel); err != nil {
		t.Fatal(err)
	}
	for _, d := range c.allDirs(rel) {
		if _, err := os.Stat(d); err == nil {
			t.Errorf("%s still there after remove", d)
		}
	}
}

// A fleet with a memory limit runs each builder in a cgroup of its own under
// that limit, reports samples for the builds leasing it, and removes the
// cgroup when the builder stops.
func TestFleetBuilderCgroupAndSamples(t *testing.T) {
	c := needCgroups(t)
	var mu sync.Mutex
	var got []Usage
	env := newEnv(t, func(cfg *Config) {
		cfg.MemoryLimit = 512 << 20
		cfg.OnUsage = func(u Usage) {
			mu.Lock()
			got = append(got, u)
			mu.Unlock()
		}
	})
	f := env.fleet
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := f.Acquire(ctx, spec.Spec{ProjectID: "cg1", Platform: "linux/amd64"}); err != nil {
		t.Fatal(err)
	}
	var st Status
	for _, s := range f.Status() {
		if s.ProjectID == "cg1" {
			st = s
		}
	}
	// buildkitd is in the builder's cgroup, <base>/<project>-<arch>-<random>
	// (no other build can guess it), and its RUN steps go below it.
	self, err := os.ReadFile("/proc/" + strconv.Itoa(st.PID) + "/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(regexp.QuoteMeta(f.cgBase+"/cg1-amd64-") + `[0-9a-f]{16}/buildkitd\n`).FindString(string(self))
	if m == "" {
		t.Fatalf("buildkitd (pid %d) not in %s/cg1-amd64-<random>/buildkitd:\n%s", st.PID, f.cgBase, self)
	}
	rel := strings.TrimSuffix(m, "/buildkitd\n")
	conf, err := os.ReadFile(filepath.Join(st.StateDir, "buildkitd.toml"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(conf), `defaultCgroupParent = "`+rel+`"`) {
		t.Fatalf("buildkitd.toml has no defaultCgroupParent %s:\n%s", rel, conf)
	}
	u, err := c.read(rel)
	if err != nil {
		t.Fatal(err)
	}
	if u.MemoryLimit != 512<<20 {
		t.Fatalf("builder cgroup limit %d, want %d", u.MemoryLimit, 512<<20)
	}

	// No samples without a lease; samples name the lease with one.
	time.Sleep(1500 * time.Millisecond)
	mu.Lock()
	n := len(got)
	mu.Unlock()
	if n != 0 {
		t.Fatalf("%d samples for a builder nobody leased", n)
	}
	f.Lease("cg1", "linux/amd64", "build-a")
	deadline := time.Now().Add(10 * time.Second)
	var s Usage
	for time.Now().Before(deadline) {
		mu.Lock()
		if len(got) > 0 {
			s = got[len(got)-1]
		}
		mu.Unlock()
		if len(s.Leases) > 0 {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if len(s.Leases) != 1 || s.Leases[0] != "build-a" || s.ProjectID != "cg1" {
		t.Fatalf("sample %+v, want one for build-a of cg1", s)
	}
	if s.Memory <= 0 || s.MemoryLimit != 512<<20 || s.Interval <= 0 {
		t.Fatalf("sample %+v: want buildkitd's memory and the limit", s)
	}
	// A lease released mid-interval still gets that interval's sample.
	f.Release("cg1", "linux/amd64", "build-a")
	mu.Lock()
	before := len(got)
	mu.Unlock()
	time.Sleep(2500 * time.Millisecond)
	mu.Lock()
	after := got[before:]
	mu.Unlock()
	if len(after) == 0 || after[0].Leases[0] != "build-a" {
		t.Errorf("after release: %+v, want one last sample for build-a", after)
	}
	if len(after) > 1 {
		t.Errorf("samples went on after release: %+v", after)
	}

	// Stopping the builder removes its cgroup in every hierarchy.
	if err := f.Close(ctx); err != nil {
		t.Fatal(err)
	}
	for _, d := range c.allDirs(f.cgBase) {
		if _, err := os.Stat(d); err == nil {
			t.Errorf("cgroup %s left after the fleet closed", d)
		}
	}
}

// What a killed kiln left in its fleet's cgroups (a RUN step outlives its
// buildkitd) is killed and removed when a fleet on the same Root starts.
func TestNewFleetRemovesLeftoverCgroups(t *testing.T) {
	c := needCgroups(t)
	bin := buildkitdPath(t)
	base := t.TempDir()
	ca, err := pki.Open(filepath.Join(base, "pki"))
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(base, "builders")
	if err := os.MkdirAll(root, 0o700); err != nil {
		t.Fatal(err)
	}
	resolved, err := filepath.EvalSymlinks(root)
	if err != nil {
		t.Fatal(err)
	}
	leftover := cgroupBase(resolved) + "/old-amd64"
	if err := c.create(leftover+"/buildkit/x", 0); err != nil {
		t.Fatal(err)
	}
	sleeper := exec.Command("sleep", "300")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	defer sleeper.Process.Kill()
	exited := make(chan struct{})
	go func() { _ = sleeper.Wait(); close(exited) }()
	if err := c.enter(leftover+"/buildkit/x", sleeper.Process.Pid); err != nil {
		t.Fatal(err)
	}
	f, err := NewFleet(Config{Root: root, BuildkitdPath: bin, CA: ca, Network: Network{Pool: netip.MustParsePrefix("10.60.16.0/20")}})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close(context.Background())
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		t.Fatal("a process left in the fleet's cgroup survived NewFleet")
	}
	for _, d := range c.allDirs(leftover) {
		if _, err := os.Stat(d); err == nil {
			t.Errorf("leftover cgroup %s not removed", d)
		}
	}
}
