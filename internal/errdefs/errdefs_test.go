package errdefs_test

import (
	"errors"
	"testing"

	"github.com/kiln-dev/kiln/internal/errdefs"
)

// A full data disk is both kinds (the edge answers ResourceExhausted; a
// retry loop can tell it apart) and says how much room is left.
func TestDiskFull(t *testing.T) {
	err := errdefs.DiskFull(4096)
	if !errdefs.IsDiskFull(err) || !errors.Is(err, errdefs.ErrExhausted) {
		t.Errorf("DiskFull is not ErrDiskFull and ErrExhausted: %v", err)
	}
	if want := "kiln's data disk is full (4096 bytes free); the server's operator must free space on it, then retry"; err.Error() != want {
		t.Errorf("message %q, want %q", err, want)
	}
	if got := errdefs.DiskFull(-1).Error(); got != "kiln's data disk is full; the server's operator must free space on it, then retry" {
		t.Errorf("unknown room: %q", got)
	}
	if errdefs.IsDiskFull(errdefs.Wrapf(errdefs.ErrExhausted, nil, "quota")) {
		t.Errorf("another ErrExhausted reads as a full disk")
	}
}
