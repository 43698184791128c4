package builder

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Each running builder has a cgroup of its own, so that kiln can cap its
// memory and measure what it uses. Paths are absolute within a hierarchy
// (runc reads an absolute cgroupsPath that way too):
//
//	/kiln/<fleet>/                   all builders of one Fleet (a hash of its Root)
//	/kiln/<fleet>/<project>-<arch>/  one builder: the memory limit, and what samples read
//	    buildkitd/                   buildkitd itself
//	    buildkit/<container id>/     its RUN steps (buildkitd.toml's defaultCgroupParent)
//
// buildkitd sits in a leaf of its own because cgroup v2 lets a cgroup with
// processes have no controlled children.
//
// Under cgroup v1 the builder's directory is made in the memory, cpuacct and
// blkio hierarchies (those mounted); runc adds the containers' directories
// in every hierarchy, so removal walks them all. Under cgroup v2 (one
// unified hierarchy at /sys/fs/cgroup) the memory, cpu and io controllers are
// enabled down the path.
//
// A build may name its own cgroup parent (the Dockerfile frontend's
// cgroup-parent option); its RUN steps then run outside the builder's cgroup,
// unlimited and unmeasured. docs/operating.md says so. It cannot name another
// builder's: their names end in a random part made at each start
// (builderCgroup).

const cgroupFS = "/sys/fs/cgroup"

type cgroupVersion int

const (
	cgroupNone cgroupVersion = iota
	cgroupV1
	cgroupV2
)

func (v cgroupVersion) String() string {
	switch v {
	case cgroupV1:
		return "v1"
	case cgroupV2:
		return "v2"
	}
	return "none"
}

// cgroupSystem is the machine's cgroup setup, detected once.
type cgroupSystem struct {
	version cgroupVersion
	// v1: every mounted hierarchy by controller name ("memory",
	// "cpuacct", "name=systemd", ..., and "unified" for a hybrid setup's
	// cgroup2 mount) → mount point; a hierarchy of joint controllers
	// ("cpu,cpuacct") appears under each. v2: "" → cgroupFS.
	mounts map[string]string
}

// detectCgroups reads the cgroup mounts of this process's mount namespace.
// cgroup v2 is used only when it is the whole hierarchy at /sys/fs/cgroup;
// a hybrid setup (v1 controllers plus an empty unified mount) counts as v1.
// v1 needs the memory controller.
func detectCgroups() cgroupSystem {
	var st unix.Statfs_t
	if unix.Statfs(cgroupFS, &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
		return cgroupSystem{version: cgroupV2, mounts: map[string]string{"": cgroupFS}}
	}
	ms, err := mounts()
	if err != nil {
		return cgroupSystem{}
	}
	hier := map[string]string{}
	for _, m := range ms {
		if !isUnder(m.mp, cgroupFS) || m.root != "/" {
			continue // a cgroup mounted elsewhere, or only part of a hierarchy
		}
		switch m.fstype {
		case "cgroup":
		case "cgroup2":
			// A hybrid setup's unified hierarchy, with no controllers:
			// runc makes the containers' directories there too.
			hier["unified"] = m.mp
			continue
		default:
			continue
		}
		for _, opt := range m.super {
			switch opt {
			case "rw", "ro":
				continue
			}
			if _, ok := hier[opt]; !ok {
				hier[opt] = m.mp
			}
		}
	}
	if _, ok := hier["memory"]; !ok {
		return cgroupSystem{}
	}
	return cgroupSystem{version: cgroupV1, mounts: hier}
}

// measured are the v1 controllers a builder's cgroup is made in.
var measured = []string{"memory", "cpuacct", "blkio"}

// dirs lists the directories of cgroup rel (an absolute path within a
// hierarchy) in the hierarchies kiln creates it in: measured ones (v1) or
// the unified one.
func (c cgroupSystem) dirs(rel string) []string {
	if c.version == cgroupV2 {
		return []string{filepath.Join(cgroupFS, rel)}
	}
	var out []string
	for _, ctl := range measured {
		if mp, ok := c.mounts[ctl]; ok && !slices.Contains(out, filepath.Join(mp, rel)) {
			out = append(out, filepath.Join(mp, rel))
		}
	}
	return out
}

// allDirs is dirs over every hierarchy (v1): where runc may have made
// directories under rel.
func (c cgroupSystem) allDirs(rel string) []string {
	if c.version == cgroupV2 {
		return c.dirs(rel)
	}
	seen := map[string]bool{}
	var out []string
	for _, mp := range c.mounts {
		if d := filepath.Join(mp, rel); !seen[d] {
			seen[d] = true
			out = append(out, d)
		}
	}
	sort.Strings(out)
	return out
}

// path returns the directory of rel in the hierarchy of controller ctl (v1),
// or in the unified hierarchy (v2); "" when ctl is not mounted.
func (c cgroupSystem) path(ctl, rel string) string {
	if c.version == cgroupV2 {
		return filepath.Join(cgroupFS, rel)
	}
	mp, ok := c.mounts[ctl]
	if !ok {
		return ""
	}
	return filepath.Join(mp, rel)
}

// create makes cgroup rel with its buildkitd leaf and applies memLimit
// (bytes; 0: none). Swap is capped too (to nothing beyond the limit), so a
// build that outgrows the limit is OOM-killed rather than swapped out.
func (c cgroupSystem) create(rel string, memLimit int64) error {
	switch c.version {
	case cgroupV1:
		for _, d := range c.dirs(rel) {
			if err := os.MkdirAll(filepath.Join(d, "buildkitd"), 0o755); err != nil {
				return err
			}
		}
		if memLimit > 0 {
			mem := c.path("memory", rel)
			if err := writeFile(filepath.Join(mem, "memory.limit_in_bytes"), strconv.FormatInt(memLimit, 10)); err != nil {
				return err
			}
			// memory+swap: only where swap accounting is on.
			if sw := filepath.Join(mem, "memory.memsw.limit_in_bytes"); exists(sw) {
				if err := writeFile(sw, strconv.FormatInt(memLimit, 10)); err != nil {
					return err
				}
			}
		}
		return nil
	case cgroupV2:
		// Enable the controllers from the root down to the builder's
		// cgroup, whose children (buildkitd, the containers) get them.
		avail, err := os.ReadFile(filepath.Join(cgroupFS, "cgroup.controllers"))
		if err != nil {
			return err
		}
		var enable []string
		for _, ctl := range strings.Fields(string(avail)) {
			switch ctl {
			case "memory", "cpu", "io", "pids":
				enable = append(enable, "+"+ctl)
			}
		}
		dir := cgroupFS
		for _, part := range strings.Split(strings.Trim(rel, "/"), "/") {
			if len(enable) > 0 {
				if err := writeFile(filepath.Join(dir, "cgroup.subtree_control"), strings.Join(enable, " ")); err != nil {
					return fmt.Errorf("enable controllers in %s: %w", dir, err)
				}
			}
			dir = filepath.Join(dir, part)
			if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
				return err
			}
		}
		if len(enable) > 0 {
			if err := writeFile(filepath.Join(dir, "cgroup.subtree_control"), strings.Join(enable, " ")); err != nil {
				return fmt.Errorf("enable controllers in %s: %w", dir, err)
			}
		}
		if err := os.Mkdir(filepath.Join(dir, "buildkitd"), 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
		if memLimit > 0 {
			if err := writeFile(filepath.Join(dir, "memory.max"), strconv.FormatInt(memLimit, 10)); err != nil {
				return err
			}
			if sw := filepath.Join(dir, "memory.swap.max"); exists(sw) {
				if err := writeFile(sw, "0"); err != nil {
					return err
				}
			}
		}
		return nil
	}
	return errors.New("no cgroup hierarchy")
}

// enter moves process pid into rel's buildkitd leaf.
func (c cgroupSystem) enter(rel string, pid int) error {
	for _, d := range c.dirs(rel) {
		if err := writeFile(filepath.Join(d, "buildkitd", "cgroup.procs"), strconv.Itoa(pid)); err != nil {
			return err
		}
	}
	return nil
}

// pids lists the processes in rel and every cgroup below it.
func (c cgroupSystem) pids(rel string) []int {
	root := c.path("memory", rel)
	if root == "" {
		return nil
	}
	var pids []int
	for _, d := range subtree(root) {
		b, err := os.ReadFile(filepath.Join(d, "cgroup.procs"))
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

// remove deletes rel and every cgroup below it in every hierarchy, deepest
// first. A cgroup that still has processes cannot be removed (EBUSY): the
// caller kills them first. A missing rel is no error.
func (c cgroupSystem) remove(rel string) error {
	var errs []error
	for _, root := range c.allDirs(rel) {
		dirs := subtree(root)
		for i := len(dirs) - 1; i >= 0; i-- {
			if err := unix.Rmdir(dirs[i]); err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("remove cgroup %s: %w", dirs[i], err))
			}
		}
	}
	return errors.Join(errs...)
}

// subtree lists root and the directories below it, parents before their
// children; nothing if root does not exist.
func subtree(root string) []string {
	var out []string
	_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil // gone meanwhile, or root missing
		}
		if d.IsDir() {
			out = append(out, p)
		}
		return nil
	})
	return out
}

// cgroupUsage is one reading of a builder's cgroup counters. Counters are
// cumulative since the cgroup was made.
type cgroupUsage struct {
	CPUNanos    uint64 // CPU time of all its processes
	Memory      int64  // working set: usage less inactive file cache
	MemoryPeak  int64  // highest usage (v1: including page cache); 0 if the kernel does not say
	MemoryLimit int64  // 0: no limit
	IORead      uint64 // bytes read from block devices
	IOWrite     uint64 // bytes written to block devices (v1 counts only what bypasses the page cache or is written back for it)
	// OOMKills counts processes the kernel killed for want of memory in
	// it. Under v1 the kernel counts a kill in the victim's own cgroup and
	// nowhere above, so this sums the cgroups below that still exist: a RUN
	// step's cgroup goes with its container, and the count with it. v1
	// builders therefore also watch OOM notifications (oomWatch), counted
	// in OOMEvents by whoever holds the watch.
	OOMKills  uint64
	OOMEvents uint64
}

// noLimitV1 is at least what cgroup v1 reports for "no limit"
// (PAGE_COUNTER_MAX pages, rounded).
const noLimitV1 = int64(1) << 62

// read takes a reading of rel. Counters a kernel lacks read as 0.
func (c cgroupSystem) read(rel string) (cgroupUsage, error) {
	var u cgroupUsage
	switch c.version {
	case cgroupV1:
		mem := c.path("memory", rel)
		usage, err := readInt(filepath.Join(mem, "memory.usage_in_bytes"))
		if err != nil {
			return u, err
		}
		stat := readKeyed(filepath.Join(mem, "memory.stat"))
		u.Memory = max(usage-stat["total_inactive_file"], 0)
		u.MemoryPeak, _ = readInt(filepath.Join(mem, "memory.max_usage_in_bytes"))
		if l, _ := readInt(filepath.Join(mem, "memory.limit_in_bytes")); l < noLimitV1 {
			u.MemoryLimit = l
		}
		for _, d := range subtree(mem) {
			u.OOMKills += uint64(readKeyed(filepath.Join(d, "memory.oom_control"))["oom_kill"])
		}
		if p := c.path("cpuacct", rel); p != "" {
			n, _ := readInt(filepath.Join(p, "cpuacct.usage"))
			u.CPUNanos = uint64(n)
		}
		if p := c.path("blkio", rel); p != "" {
			u.IORead, u.IOWrite = readBlkio(filepath.Join(p, "blkio.throttle.io_service_bytes_recursive"))
		}
	case cgroupV2:
		dir := filepath.Join(cgroupFS, rel)
		usage, err := readInt(filepath.Join(dir, "memory.current"))
		if err != nil {
			return u, err
		}
		stat := readKeyed(filepath.Join(dir, "memory.stat"))
		u.Memory = max(usage-stat["inactive_file"], 0)
		u.MemoryPeak, _ = readInt(filepath.Join(dir, "memory.peak"))
		if l, err := readInt(filepath.Join(dir, "memory.max")); err == nil { // "max" fails to parse: no limit
			u.MemoryLimit = l
		}
		u.OOMKills = uint64(readKeyed(filepath.Join(dir, "memory.events"))["oom_kill"])
		u.CPUNanos = uint64(readKeyed(filepath.Join(dir, "cpu.stat"))["usage_usec"]) * 1000
		u.IORead, u.IOWrite = readIOStat(filepath.Join(dir, "io.stat"))
	default:
		return u, errors.New("no cgroup hierarchy")
	}
	return u, nil
}

// readBlkio sums the Read and Write lines of a v1 blkio io_service_bytes file
// ("8:0 Read 4096").
func readBlkio(path string) (read, write uint64) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) != 3 {
			continue
		}
		n, _ := strconv.ParseUint(f[2], 10, 64)
		switch f[1] {
		case "Read":
			read += n
		case "Write":
			write += n
		}
	}
	return read, write
}

// readIOStat sums rbytes and wbytes over the devices of a v2 io.stat file
// ("8:0 rbytes=4096 wbytes=0 rios=1 ...").
func readIOStat(path string) (read, write uint64) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		for _, kv := range strings.Fields(line) {
			k, v, ok := strings.Cut(kv, "=")
			if !ok {
				continue
			}
			n, _ := strconv.ParseUint(v, 10, 64)
			switch k {
			case "rbytes":
				read += n
			case "wbytes":
				write += n
			}
		}
	}
	return read, write
}

// readKeyed parses "key value" lines; unparsable lines are skipped.
func readKeyed(path string) map[string]int64 {
	out := map[string]int64{}
	b, err := os.ReadFile(path)
	if err != nil {
		return out
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		if n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err == nil {
			out[k] = n
		}
	}
	return out
}

func readInt(path string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
}

func writeFile(path, s string) error {
	// O_WRONLY without O_CREATE or O_TRUNC: cgroup files exist and take
	// one write each.
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(s)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// oomWatch counts the OOM notifications of a v1 memory cgroup
// (cgroup.event_control on memory.oom_control): one or more per time the
// cgroup ran out of memory, whichever of its descendants the victim was in.
type oomWatch struct {
	efd    *os.File
	events atomic.Uint64
	done   chan struct{}
}

// watchOOM starts an oomWatch on rel; nil under cgroup v2, whose
// memory.events counts kills in ancestors too.
func (c cgroupSystem) watchOOM(rel string) (*oomWatch, error) {
	if c.version != cgroupV1 {
		return nil, nil
	}
	mem := c.path("memory", rel)
	ctl, err := os.Open(filepath.Join(mem, "memory.oom_control"))
	if err != nil {
		return nil, err
	}
	defer ctl.Close() // the registration holds its own reference
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, err
	}
	efd := os.NewFile(uintptr(fd), "oom-eventfd")
	if err := writeFile(filepath.Join(mem, "cgroup.event_control"), fmt.Sprintf("%d %d", fd, ctl.Fd())); err != nil {
		efd.Close()
		return nil, err
	}
	w := &oomWatch{efd: efd, done: make(chan struct{})}
	go func() {
		defer close(w.done)
		buf := make([]byte, 8)
		for {
			if _, err := efd.Read(buf); err != nil {
				return // closed
			}
			w.events.Add(binary.NativeEndian.Uint64(buf))
		}
	}()
	return w, nil
}

// count is the number of notifications so far; 0 for a nil watch.
func (w *oomWatch) count() uint64 {
	if w == nil {
		return 0
	}
	return w.events.Load()
}

// close stops the watch (before the cgroup is removed, which would notify
// it once more).
func (w *oomWatch) close() {
	if w == nil {
		return
	}
	w.efd.Close()
	<-w.done
}
