package builder

import (
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// A data disk filled to the last byte can wedge BuildKit for good: the
// space a failed step filled is given back only by BuildKit's garbage
// collection, which must itself write its metadata first, and fails. So
// the fleet keeps a small reserve file in its root. When it restarts a
// builder that ran out of disk it deletes the reserve first, so that the
// new buildkitd (and kiln's database) has room to collect and write; the
// reserve is made again once the disk has room to spare.

// reserveBytes is the reserve's size; it is made again when the disk has
// reserveSpare times that free.
const (
	reserveBytes = 16 << 20
	reserveSpare = 4
)

func (f *Fleet) reservePath() string { return filepath.Join(f.root, ".disk-reserve") }

// keepReserve makes the reserve if it is missing and the disk has room
// for it to spare. Best effort: a disk without that room goes without.
func (f *Fleet) keepReserve() {
	p := f.reservePath()
	if _, err := os.Stat(p); err == nil {
		return
	}
	var st unix.Statfs_t
	if unix.Statfs(f.root, &st) != nil || int64(st.Bavail)*st.Bsize < reserveSpare*reserveBytes {
		return
	}
	tmp := p + ".new"
	fh, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return
	}
	// Allocated, not sparse: the point is to hold the blocks.
	err = unix.Fallocate(int(fh.Fd()), 0, 0, reserveBytes)
	if err != nil {
		_, err = fh.Write(make([]byte, reserveBytes))
	}
	if cerr := fh.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, p)
	}
	if err != nil {
		os.Remove(tmp)
	}
}

// releaseReserve deletes the reserve, reporting whether there was one.
func (f *Fleet) releaseReserve() bool {
	if os.Remove(f.reservePath()) != nil {
		return false
	}
	f.log.Warn("a builder ran out of disk: released kiln's disk reserve so that it can clean up", "bytes", reserveBytes)
	return true
}
