package builder

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/ticker"
)

// sampleInterval is how often the fleet reads the cgroup of each running
// builder.
const sampleInterval = time.Second

// Usage is what a builder used during one sampling interval, reported
// (Config.OnUsage) for the builds that held it. The numbers are the
// builder's, not one build's: builds sharing a builder get the same report.
type Usage struct {
	ProjectID, Platform string
	// Leases are the builds that held the builder at any time in the
	// interval (one released mid-interval is still told of it).
	Leases   []string
	At       time.Time     // end of the interval
	Interval time.Duration // its length (about sampleInterval)
	CPUCores float64       // CPU time used over wall time: 1.5 = one and a half cores busy
	// Memory is the working set at At (usage less inactive file cache);
	// MemoryPeak the highest usage since the builder started, page cache
	// included under cgroup v1 (0 if the kernel does not say).
	Memory, MemoryPeak int64
	MemoryLimit        int64 // the builder's limit; 0: none
	IORead, IOWrite    int64 // block device bytes read and written in the interval
	OOMKills           int   // processes of the builder the kernel killed for want of memory in the interval
}

// cgroupBase is the cgroup of all builders of the fleet whose (resolved)
// Root is root: /kiln/<16 hex digits of its hash>. Two kiln servers on one
// machine (different data directories) never share one.
func cgroupBase(root string) string {
	sum := sha256.Sum256([]byte(root))
	return "/kiln/" + hex.EncodeToString(sum[:8])
}

// setupCgroups detects the machine's cgroups and removes what a previous
// run of a fleet with this Root left (killing its processes first). With
// no usable cgroups (not root, nothing mounted) builders run without one:
// no limit and no samples, which is an error only when a memory limit was
// asked for.
func (f *Fleet) setupCgroups() error {
	f.cg = detectCgroups()
	if f.cg.version != cgroupNone {
		f.cgBase = cgroupBase(f.root)
		f.killCgroup(f.cgBase)
		err := f.cg.remove(f.cgBase)
		if err == nil {
			// Probe that cgroups can be made here (root, writable).
			probe := f.cgBase + "/probe"
			if err = f.cg.create(probe, 0); err == nil {
				err = f.cg.remove(probe)
			}
		}
		if err != nil {
			f.log.Warn("builder cgroups unusable; builders run without resource limits or samples", "cgroup", f.cg.version.String(), "err", err)
			f.cg = cgroupSystem{}
		}
	}
	if f.cg.version == cgroupNone {
		if f.cfg.MemoryLimit > 0 {
			return fmt.Errorf("builder memory limit: this machine has no usable cgroup (v1 memory controller or v2) for kiln to enforce it: %w", errdefs.ErrInvalid)
		}
		f.log.Warn("no usable cgroups: builders run without resource limits or samples")
		return nil
	}
	f.log.Info("builder cgroups", "version", f.cg.version.String(), "base", f.cgBase, "memory_limit", f.cfg.MemoryLimit)
	return nil
}

// removeCgroups removes the fleet's cgroup (its builders' are gone) and
// /kiln if no other fleet uses it (Close).
func (f *Fleet) removeCgroups() {
	if f.cg.version == cgroupNone {
		return
	}
	if err := f.cg.remove(f.cgBase); err != nil {
		f.log.Warn("builder cgroups not removed", "cgroup", f.cgBase, "err", err)
	}
	for _, d := range f.cg.allDirs(filepath.Dir(f.cgBase)) {
		_ = unix.Rmdir(d) // fails while another fleet has builders there
	}
}

// builderCgroup is a new cgroup for a run of b ("" when the fleet runs
// builders without): <base>/<project>-<arch>-<random>. The random part
// keeps another project's build from naming it as its cgroup parent
// (BuildKit lets a build choose one) to run steps under this builder's
// memory limit: a build sees its own cgroup at most, never a sibling's.
func (f *Fleet) builderCgroup(b *builder) string {
	if f.cg.version == cgroupNone {
		return ""
	}
	var r [8]byte
	_, _ = rand.Read(r[:])
	return f.cgBase + "/" + b.projectID + "-" + b.arch + "-" + hex.EncodeToString(r[:])
}

// killCgroup SIGKILLs every process in rel and below until none is left (or
// a second has passed: a process stuck in the kernel, which cleanupTree
// reports through the mounts it keeps).
func (f *Fleet) killCgroup(rel string) int {
	seen := map[int]bool{}
	for round := 0; round < 40; round++ {
		pids := f.cg.pids(rel)
		if len(pids) == 0 {
			break
		}
		for _, pid := range pids {
			if pid != 0 && unix.Kill(pid, unix.SIGKILL) == nil {
				seen[pid] = true
			}
		}
		time.Sleep(25 * time.Millisecond)
	}
	return len(seen)
}

// removeCgroup removes b's cgroup after its run: its processes are dead, but
// the kernel may take a moment to let go of a cgroup (EBUSY).
func (f *Fleet) removeCgroup(b *builder, rel string) {
	var err error
	for try := 0; try < 20; try++ {
		if err = f.cg.remove(rel); err == nil {
			return
		}
		f.killCgroup(rel)
		time.Sleep(50 * time.Millisecond)
	}
	f.log.Warn("builder cgroup not removed", "project", b.projectID, "platform", b.platform, "cgroup", rel, "err", err)
}

// sample reads every running builder's cgroup each sampleInterval and
// reports (Config.OnUsage) those that builds held during the interval.
// OnUsage must not block.
func (f *Fleet) sample() {
	defer f.wg.Done()
	if f.cg.version == cgroupNone || f.cfg.OnUsage == nil {
		return
	}
	type job struct {
		b      *builder
		r      *run
		leases []string
	}
	ticker.Run(f.quit, sampleInterval, func(time.Time, time.Duration) {
		var jobs []job
		f.mu.Lock()
		for _, b := range f.builders {
			if b.run == nil || b.run.proc == nil || b.run.cgroup == "" {
				continue
			}
			leases := slices.Sorted(maps.Keys(b.sampleLeases))
			b.sampleLeases = make(map[string]bool, len(b.leases))
			for l := range b.leases {
				b.sampleLeases[l] = true
			}
			jobs = append(jobs, job{b, b.run, leases})
		}
		f.mu.Unlock()
		for _, j := range jobs {
			if u, ok := f.readRun(j.b, j.r, j.leases); ok && len(j.leases) > 0 {
				f.cfg.OnUsage(u)
			}
		}
	})
}

// readRun reads r's cgroup and returns the Usage since the previous reading
// of it; ok is false for the first reading or when the cgroup is gone.
// Readings are taken in turn under f.mu, so two readers (the sampler, and
// lastUsage at the end of the run) never report one interval twice.
func (f *Fleet) readRun(b *builder, r *run, leases []string) (Usage, bool) {
	u, err := f.cg.read(r.cgroup)
	now := time.Now()
	if err != nil {
		return Usage{}, false
	}
	f.mu.Lock()
	prev, prevAt := r.usage, r.usageAt
	u.OOMEvents = r.oom.count()
	stale := prev != nil && (u.OOMEvents < prev.OOMEvents || u.CPUNanos < prev.CPUNanos || now.Before(prevAt))
	if !stale {
		r.usage, r.usageAt = &u, now
	}
	f.mu.Unlock()
	if prev == nil || stale {
		return Usage{}, false
	}
	return usageBetween(b, leases, *prev, u, prevAt, now), true
}

// usageBetween is the Usage of the interval from reading a (at ta) to
// reading b (at tb) of one cgroup.
func usageBetween(bl *builder, leases []string, a, b cgroupUsage, ta, tb time.Time) Usage {
	d := tb.Sub(ta)
	u := Usage{ProjectID: bl.projectID, Platform: bl.platform, Leases: leases, At: tb, Interval: d,
		Memory: b.Memory, MemoryPeak: b.MemoryPeak, MemoryLimit: b.MemoryLimit}
	if d > 0 && b.CPUNanos >= a.CPUNanos {
		u.CPUCores = float64(b.CPUNanos-a.CPUNanos) / float64(d.Nanoseconds())
	}
	if b.IORead >= a.IORead {
		u.IORead = int64(b.IORead - a.IORead)
	}
	if b.IOWrite >= a.IOWrite {
		u.IOWrite = int64(b.IOWrite - a.IOWrite)
	}
	if b.OOMKills > a.OOMKills { // v1: may also drop, as cgroups below go
		u.OOMKills = int(b.OOMKills - a.OOMKills)
	}
	if u.OOMKills == 0 && b.OOMEvents > a.OOMEvents {
		u.OOMKills = 1 // v1: the victim's cgroup went before it was read
	}
	return u
}

// lastUsage reports an OOM kill in a run's cgroup since the sampler's last
// reading, just before the cgroup goes, to the builds that held the builder
// then or during the interval: a build that ended between two samples, or
// whose buildkitd itself was OOM-killed, still gets its event.
func (f *Fleet) lastUsage(b *builder, r *run) {
	if f.cfg.OnUsage == nil || r.cgroup == "" {
		return
	}
	f.mu.Lock()
	held := maps.Clone(b.sampleLeases)
	if held == nil {
		held = map[string]bool{}
	}
	for l := range b.leases {
		held[l] = true
	}
	f.mu.Unlock()
	if len(held) == 0 {
		return
	}
	if u, ok := f.readRun(b, r, slices.Sorted(maps.Keys(held))); ok && u.OOMKills > 0 {
		f.cfg.OnUsage(u)
	}
}
