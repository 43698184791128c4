package builder

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/errdefs"
)

func blocksOf(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Blocks * 512
}

func TestCacheSizeCountsLikeDu(t *testing.T) {
	root := t.TempDir()
	f := &Fleet{root: root}
	if n, err := f.CacheSize("neverbuilt"); n != 0 || err != nil {
		t.Errorf("project without a directory: %d, %v; want 0, nil", n, err)
	}

	dir := filepath.Join(root, "proj1", "amd64", "state")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	big := filepath.Join(dir, "blob")
	if err := os.WriteFile(big, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	// A hard link is the same data: counted once.
	if err := os.Link(big, filepath.Join(dir, "blob-link")); err != nil {
		t.Fatal(err)
	}
	// A symlink to a large file elsewhere is not followed.
	outside := filepath.Join(t.TempDir(), "outside")
	if err := os.WriteFile(outside, make([]byte, 4<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(dir, "escape")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/", filepath.Join(dir, "root")); err != nil {
		t.Fatal(err)
	}
	// A sparse file counts what it allocates, not its length.
	sparse, err := os.Create(filepath.Join(dir, "sparse"))
	if err != nil {
		t.Fatal(err)
	}
	sparse.Truncate(1 << 30)
	sparse.Close()

	got, err := f.CacheSize("proj1")
	if err != nil {
		t.Fatal(err)
	}
	if got < 1<<20 || got > 1<<20+256<<10 {
		t.Errorf("CacheSize = %d; want about 1 MiB (the blob once, plus directories and links)", got)
	}
	if got >= blocksOf(t, big)+4<<20 {
		t.Errorf("CacheSize = %d followed the symlink", got)
	}
	// Another project's directory is not counted.
	os.MkdirAll(filepath.Join(root, "proj2"), 0o700)
	os.WriteFile(filepath.Join(root, "proj2", "x"), make([]byte, 2<<20), 0o600)
	if again, _ := f.CacheSize("proj1"); again != got {
		t.Errorf("proj1 changed from %d to %d when proj2 grew", got, again)
	}
}

func TestCacheSizeRejectsHostileProjectIDs(t *testing.T) {
	f := &Fleet{root: t.TempDir()}
	for _, id := range []string{"", "..", "../etc", "a/b", "/abs", "proj\x00", "UPPER"} {
		if _, err := f.CacheSize(id); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("CacheSize(%q) = %v, want ErrInvalid", id, err)
		}
	}
}

func TestDirUsageIsBounded(t *testing.T) {
	dir := t.TempDir()
	for i := 0; i < 50; i++ {
		os.WriteFile(filepath.Join(dir, "f"+string(rune('a'+i%26))+string(rune('a'+i/26))), []byte("x"), 0o600)
	}
	n, err := dirUsage(dir, 10, time.Minute)
	if !errors.Is(err, errdefs.ErrExhausted) || n <= 0 {
		t.Errorf("dirUsage past its entry bound = %d, %v; want a partial count and ErrExhausted", n, err)
	}
	if _, err := dirUsage(dir, 1000, time.Minute); err != nil {
		t.Errorf("within bounds: %v", err)
	}
}
