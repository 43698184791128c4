package builder

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// cleanupTree kills every process that belongs to a builder and detaches every
// mount under dir. pgid, if not 0, is buildkitd's process group: buildkitd
// itself and helpers that did not change group. The rest (runc and the
// containers of RUN steps, which BuildKit puts in their own process groups)
// are found by path. Killing before unmounting matters: a live container
// would keep using a lazily detached overlay.
//
// It returns the number of processes found by path and an error joining the
// mounts that could not be detached.
func cleanupTree(dir string, pgid int) (killed int, err error) {
	if pgid > 0 {
		_ = unix.Kill(-pgid, unix.SIGKILL) // ESRCH: the group is already gone
	}
	// SIGKILLed processes disappear from the scan once they are zombies (a
	// zombie has no root or cwd), so a few rounds suffice; the loop also
	// catches a process forked by one that was being killed.
	for round := 0; round < 40; round++ {
		pids := processesUnder(dir)
		if len(pids) == 0 {
			break
		}
		for _, pid := range pids {
			if unix.Kill(pid, unix.SIGKILL) == nil && round == 0 {
				killed++
			}
		}
		time.Sleep(25 * time.Millisecond)
	}
	return killed, unmountUnder(dir)
}

// processesUnder lists processes whose root, cwd or executable is dir or
// below it, excluding this process. Processes that vanish mid-scan or whose
// links cannot be read are skipped.
func processesUnder(dir string) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	self := os.Getpid()
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		for _, l := range [...]string{"root", "cwd", "exe"} {
			target, err := os.Readlink("/proc/" + e.Name() + "/" + l)
			if err != nil {
				continue
			}
			if isUnder(strings.TrimSuffix(target, " (deleted)"), dir) {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
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

// mountsUnder returns the mount points at or below dir from
// /proc/self/mountinfo, deepest first. A path mounted several times appears
// once per mount, so each is detached in turn.
func mountsUnder(dir string) ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var mps []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		// Fields: id parent major:minor root mountpoint options ...
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMountinfo(fields[4])
		if isUnder(mp, dir) {
			mps = append(mps, mp)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	sort.SliceStable(mps, func(i, j int) bool {
		return strings.Count(mps[i], "/") > strings.Count(mps[j], "/")
	})
	return mps, nil
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
