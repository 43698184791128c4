package registry

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"testing"

	storagedriver "github.com/distribution/distribution/v3/registry/storage/driver"
)

// distribution's drivers wrap the system's error in a storagedriver.Error
// that does not unwrap: a full disk must still be recognised through it.
func TestNoSpaceThroughDriverErrors(t *testing.T) {
	enospc := &os.PathError{Op: "write", Path: "/srv/kiln/registry/x", Err: syscall.ENOSPC}
	for _, err := range []error{
		enospc,
		storagedriver.Error{DriverName: "filesystem", Detail: enospc},
		fmt.Errorf("commit: %w", storagedriver.Error{DriverName: "filesystem", Detail: fmt.Errorf("flush: %w", enospc)}),
		&storagedriver.Error{DriverName: "filesystem", Detail: syscall.EDQUOT},
	} {
		if !noSpace(err) {
			t.Errorf("noSpace(%v) = false", err)
		}
	}
	for _, err := range []error{nil, errors.New("no space left on device"), storagedriver.Error{DriverName: "filesystem", Detail: syscall.EIO}} {
		if noSpace(err) {
			t.Errorf("noSpace(%v) = true", err)
		}
	}
}

func TestUploadDir(t *testing.T) {
	for p, want := range map[string]string{
		reposRoot + "/p1/app/_uploads/abc/data":            reposRoot + "/p1/app/_uploads/abc",
		reposRoot + "/p1/_uploads/abc/hashstates/sha256/0": reposRoot + "/p1/_uploads/abc",
		reposRoot + "/p1/_uploads/abc/startedat.x.tmp":     reposRoot + "/p1/_uploads/abc",
		reposRoot + "/p1/_manifests/tags/v1/current/link":  "",
		storageRoot + "/blobs/sha256/ab/abcd/data":         "",
		reposRoot + "/p1/_uploads/":                        "",
	} {
		if got := uploadDir(p); got != want {
			t.Errorf("uploadDir(%q) = %q, want %q", p, got, want)
		}
	}
}
