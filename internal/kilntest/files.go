package kilntest

import (
	"os"
	"path/filepath"
	"testing"
)

// Context makes a build context directory holding a Dockerfile
// ("FROM scratch").
func Context(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	WriteFile(t, filepath.Join(dir, "Dockerfile"), "FROM scratch\n")
	return dir
}

// WriteFile writes content to p, making its directories.
func WriteFile(t testing.TB, p, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
