package runner

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/internal/errdefs"
)

// An extracted context keeps its symlinks wherever they point; the
// Dockerfile is found without following one out of the context.
func TestFindDockerfile(t *testing.T) {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "sub"), 0o755)
	os.WriteFile(filepath.Join(root, "sub", "Dockerfile"), []byte("FROM scratch\n"), 0o644)
	os.Symlink("sub/Dockerfile", filepath.Join(root, "Dockerfile"))
	os.Symlink("/etc/passwd", filepath.Join(root, "Abs.Dockerfile"))
	os.Symlink("../../../etc/passwd", filepath.Join(root, "Up.Dockerfile"))
	os.Symlink("/etc", filepath.Join(root, "etc"))
	if p, err := findDockerfile(root, "Dockerfile"); err != nil || p != filepath.Join(root, "sub", "Dockerfile") {
		t.Errorf("findDockerfile(Dockerfile) = %q, %v", p, err)
	}
	for rel, want := range map[string]string{
		"Abs.Dockerfile": "absolute symlink",
		"Up.Dockerfile":  "escapes the build context",
		"etc/passwd":     "absolute symlink",
		"nope":           "is not in the build context",
		"sub":            "not a regular file",
	} {
		_, err := findDockerfile(root, rel)
		if err == nil || !errdefs.IsInvalid(err) || !strings.Contains(err.Error(), want) {
			t.Errorf("findDockerfile(%s) = %v; want an invalid-input error containing %q", rel, err, want)
		}
	}
}
