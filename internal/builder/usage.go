package builder

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/pki"
)

// Bounds of one CacheSize walk, so that a huge or pathological state
// directory cannot pin a request (and the disk) for long.
const (
	maxCacheWalkEntries = 2_000_000
	maxCacheWalkTime    = 20 * time.Second
)

// CacheSize reports the disk space a project's builders take: Root/<project>
// with every platform's BuildKit state (snapshots, content store, cache
// mounts), certificates and logs — what ResetProjectCache frees.
//
// It counts allocated blocks, as du does, each inode once (hard links are
// common in BuildKit's snapshots), never follows symlinks and does not
// descend into other filesystems (the overlay mounts of running RUN
// containers, which would count layers twice). A running builder may
// change its directory during the walk; files that vanish are skipped and
// the result is a close approximation. A project that never built has no
// directory: 0. The walk is bounded in entries and time; past either it
// returns what it counted with an error wrapping errdefs.ErrExhausted.
func (f *Fleet) CacheSize(projectID string) (int64, error) {
	if !pki.ValidProjectID(projectID) {
		return 0, fmt.Errorf("builder: project id %q: %w", projectID, errdefs.ErrInvalid)
	}
	return dirUsage(filepath.Join(f.root, projectID), maxCacheWalkEntries, maxCacheWalkTime)
}

var errWalkBound = errors.New("walk bound reached")

// dirUsage is du -s for dir, staying on dir's filesystem.
func dirUsage(dir string, maxEntries int, maxTime time.Duration) (int64, error) {
	rootInfo, err := os.Lstat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("builder: %w", err)
	}
	rootSt, ok := rootInfo.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, fmt.Errorf("builder: no stat data for %s", dir)
	}
	if !rootInfo.IsDir() {
		return rootSt.Blocks * 512, nil
	}
	type inode struct{ dev, ino uint64 }
	linked := map[inode]bool{}
	deadline := time.Now().Add(maxTime)
	var total int64
	var entries int
	var firstErr error
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // removed while we walked (GC, reset)
			}
			if firstErr == nil {
				firstErr = err
			}
			return nil
		}
		entries++
		if entries > maxEntries || (entries%1024 == 0 && time.Now().After(deadline)) {
			return errWalkBound
		}
		info, err := d.Info() // lstat: symlinks are counted, not followed
		if err != nil {
			return nil
		}
		st, ok := info.Sys().(*syscall.Stat_t)
		if !ok {
			return nil
		}
		if uint64(st.Dev) != uint64(rootSt.Dev) {
			if d.IsDir() {
				return fs.SkipDir
			}
			return nil
		}
		if !d.IsDir() && st.Nlink > 1 {
			k := inode{uint64(st.Dev), uint64(st.Ino)}
			if linked[k] {
				return nil
			}
			linked[k] = true
		}
		total += st.Blocks * 512
		return nil
	})
	if errors.Is(err, errWalkBound) {
		return total, fmt.Errorf("builder: measuring %s stopped after %d entries: %w", dir, entries, errdefs.ErrExhausted)
	}
	if err != nil {
		return total, fmt.Errorf("builder: %w", err)
	}
	if firstErr != nil {
		return total, fmt.Errorf("builder: measuring %s: %w", dir, firstErr)
	}
	return total, nil
}
