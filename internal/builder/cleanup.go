package builder

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// runcRoot is where runc keeps container state when run as root without
// --root, which is how BuildKit's runc executor runs it.
const runcRoot = "/run/runc"

// cleanupTree kills every process that belongs to a builder and detaches every
// mount under dir. pgid, if not 0, is buildkitd's process group: buildkitd
// itself and helpers that did not change group. The rest is found from dir
// (see processesUnder and containersUnder): BuildKit starts runc with a
// process group of its own, and the RUN step inside the container lives in
// another mount namespace, where its root, cwd and exe all read as "/...".
// Killing before unmounting matters: a live container would keep using a
// lazily detached overlay.
//
// It returns the number of processes found from dir and an error joining the
// mounts that could not be detached.
func cleanupTree(dir string, pgid int) (killed int, err error) {
	if pgid > 0 {
		_ = unix.Kill(-pgid, unix.SIGKILL) // ESRCH: the group is already gone
	}
	containers := containersUnder(dir)
	// SIGKILLed processes drop out of the scan once they are zombies (a
	// zombie has no root or cwd, and leaves its cgroup), so a few rounds
	// suffice; the loop also catches a process forked by one being killed.
	seen := map[int]bool{}
	for round := 0; round < 40; round++ {
		pids := processesUnder(dir)
		for _, c := range containers {
			pids = append(pids, c.pids()...)
		}
		if len(pids) == 0 {
			break
		}
		for _, pid := range pids {
			if unix.Kill(pid, unix.SIGKILL) == nil && !seen[pid] {
				seen[pid] = true
				killed++
			}
		}
		time.Sleep(25 * time.Millisecond)
	}
	// What `runc delete` would do, now that the processes are gone: drop
	// the (v1, per-controller) cgroup directories and the state directory,
	// which BuildKit would otherwise leave behind forever.
	for _, c := range containers {
		for _, p := range c.cgroups() {
			_ = os.Remove(p)
		}
		_ = os.RemoveAll(filepath.Join(runcRoot, c.ID))
	}
	return killed, unmountUnder(dir)
}

// processesUnder lists processes that belong under dir, excluding this
// process: those whose root, cwd or executable path is dir or below it (this
// finds buildkitd and runc), and those whose root or cwd is on a filesystem
// mounted only under dir (this finds container processes, whose root is an
// overlay mounted at dir/state/.../rootfs). A device that is also mounted
// outside dir (the host's disk, seen through bind mounts) proves nothing and
// is ignored. Processes that vanish mid-scan are skipped.
func processesUnder(dir string) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	devs := devicesOnlyUnder(dir)
	self := os.Getpid()
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		if procUnder("/proc/"+e.Name(), dir, devs) {
			pids = append(pids, pid)
		}
	}
	return pids
}

func procUnder(proc, dir string, devs map[uint64]bool) bool {
	for _, l := range [...]string{"root", "cwd", "exe"} {
		target, err := os.Readlink(proc + "/" + l)
		if err == nil && isUnder(strings.TrimSuffix(target, " (deleted)"), dir) {
			return true
		}
	}
	if len(devs) == 0 {
		return false
	}
	for _, l := range [...]string{"root", "cwd"} {
		var st unix.Stat_t
		if unix.Stat(proc+"/"+l, &st) == nil && devs[st.Dev] {
			return true
		}
	}
	return false
}

// runcContainer is the part of runc's state.json that cleanup needs.
type runcContainer struct {
	ID          string            `json:"id"`
	InitPID     int               `json:"init_process_pid"`
	InitStart   uint64            `json:"init_process_start"`
	CgroupPaths map[string]string `json:"cgroup_paths"`
	Config      struct {
		Rootfs string `json:"rootfs"`
	} `json:"config"`
}

// containersUnder lists runc containers whose rootfs is under dir.
func containersUnder(dir string) []runcContainer {
	ents, err := os.ReadDir(runcRoot)
	if err != nil {
		return nil
	}
	var out []runcContainer
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(runcRoot, e.Name(), "state.json"))
		if err != nil {
			continue
		}
		var c runcContainer
		if json.Unmarshal(b, &c) != nil || c.ID != e.Name() || !filepath.IsAbs(c.Config.Rootfs) {
			continue
		}
		if isUnder(filepath.Clean(c.Config.Rootfs), dir) {
			out = append(out, c)
		}
	}
	return out
}

// cgroups returns the container's cgroup directories, ignoring any path
// outside /sys/fs/cgroup.
func (c runcContainer) cgroups() []string {
	var out []string
	for _, p := range c.CgroupPaths {
		if p = filepath.Clean(p); isUnder(p, "/sys/fs/cgroup") && p != "/sys/fs/cgroup" {
			out = append(out, p)
		}
	}
	sort.Strings(out)
	return out
}

// pids lists the container's live processes: those in its cgroups, and its
// init process if that pid still names the same process (same start time).
func (c runcContainer) pids() []int {
	var pids []int
	for _, p := range c.cgroups() {
		b, err := os.ReadFile(filepath.Join(p, "cgroup.procs"))
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil {
				pids = append(pids, pid)
			}
		}
		break // every controller holds the same processes
	}
	if c.InitPID > 0 && c.InitStart != 0 && startTime(c.InitPID) == c.InitStart {
		pids = append(pids, c.InitPID)
	}
	return pids
}

// startTime reads field 22 of /proc/pid/stat (start time in clock ticks), or
// 0 if the process is gone.
func startTime(pid int) uint64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	// The command name (field 2) may hold spaces; fields resume after ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return 0
	}
	v, _ := strconv.ParseUint(f[19], 10, 64)
	return v
}

// unmountUnder detaches every mount point at or below dir, deepest first, so
// that no mount hides another that would then stay behind.
func unmountUnder(dir string) error {
	mps, err := mountsUnder(dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, mp := range mps {
		if err := unix.Unmount(mp, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			// EINVAL: no longer a mount point (a parent's detach took it along).
			errs = append(errs, fmt.Errorf("unmount %s: %w", mp, err))
		}
	}
	return errors.Join(errs...)
}

type mount struct {
	dev    uint64 // as in stat's st_dev
	root   string // the part of the filesystem mounted ("/": all of it)
	mp     string
	fstype string
	super  []string // the filesystem's own options (for a v1 cgroup: its controllers)
}

// mounts parses /proc/self/mountinfo.
func mounts() ([]mount, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []mount
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		// Fields: id parent major:minor root mountpoint options [optional...]
		// - fstype source superoptions
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		var major, minor uint32
		if _, err := fmt.Sscanf(fields[2], "%d:%d", &major, &minor); err != nil {
			continue
		}
		m := mount{dev: unix.Mkdev(major, minor), root: unescapeMountinfo(fields[3]), mp: unescapeMountinfo(fields[4])}
		if sep := slices.Index(fields, "-"); sep >= 0 && len(fields) >= sep+4 {
			m.fstype, m.super = fields[sep+1], strings.Split(fields[sep+3], ",")
		}
		out = append(out, m)
	}
	return out, sc.Err()
}

// mountsUnder returns the mount points at or below dir, deepest first. A path
// mounted several times appears once per mount, so each is detached in turn.
func mountsUnder(dir string) ([]string, error) {
	ms, err := mounts()
	if err != nil {
		return nil, err
	}
	var mps []string
	for _, m := range ms {
		if isUnder(m.mp, dir) {
			mps = append(mps, m.mp)
		}
	}
	sort.SliceStable(mps, func(i, j int) bool {
		return strings.Count(mps[i], "/") > strings.Count(mps[j], "/")
	})
	return mps, nil
}

// devicesOnlyUnder returns the devices of filesystems mounted under dir and
// nowhere else.
func devicesOnlyUnder(dir string) map[uint64]bool {
	ms, err := mounts()
	if err != nil {
		return nil
	}
	under, elsewhere := map[uint64]bool{}, map[uint64]bool{}
	for _, m := range ms {
		if isUnder(m.mp, dir) {
			under[m.dev] = true
		} else {
			elsewhere[m.dev] = true
		}
	}
	for d := range elsewhere {
		delete(under, d)
	}
	return under
}

// unescapeMountinfo undoes the kernel's octal escapes (\040 for a space, and
// so on for tab, newline and backslash) in a mountinfo path.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// isUnder reports whether p is dir or inside it. Both must be clean absolute
// paths.
func isUnder(p, dir string) bool {
	return p == dir || strings.HasPrefix(p, dir+string(filepath.Separator))
}
