// Package testenv is how kiln's tests meet the machine: where the
// repository is, and what happens when a component they need is missing.
// A missing component fails the test, so CI never passes by skipping; a
// developer opts out locally with KILN_SKIP_MISSING=1, and then every skip
// says SKIPPING and what to install.
package testenv

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// SkipMissing reports whether the developer opted out of tests whose
// components are missing (KILN_SKIP_MISSING=1).
func SkipMissing() bool { return os.Getenv("KILN_SKIP_MISSING") == "1" }

// Missing ends the test because a component it needs is not there: a
// failure, or a skip with KILN_SKIP_MISSING=1. The message should say what
// to run to get the component.
func Missing(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if SkipMissing() {
		t.Skip("SKIPPING (KILN_SKIP_MISSING=1): " + msg)
	}
	t.Fatal(msg + " (or set KILN_SKIP_MISSING=1 to skip tests that need it)")
}

// RequireRoot ends the test, as [Missing] does, unless it runs as root;
// what names what needs root ("buildkitd's OCI worker", "cgroups").
func RequireRoot(t testing.TB, what string) {
	t.Helper()
	if os.Geteuid() != 0 {
		Missing(t, "%s needs root: run the tests as root (CI does)", what)
	}
}

const kilnModule = "github.com/kiln-dev/kiln"

// RepoRoot is the directory above the working directory whose go.mod
// declares kiln's module (not a tool's nested go.mod).
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := dir; ; d = filepath.Dir(d) {
		if modulePath(filepath.Join(d, "go.mod")) == kilnModule {
			return d, nil
		}
		if d == filepath.Dir(d) {
			return "", errors.New("no go.mod of module " + kilnModule + " above " + dir)
		}
	}
}

// Bin is bin/<name> at the repository root, where hack/setup.sh puts the
// components it builds; it ends the test, as [Missing] does, when the file
// is not there.
func Bin(t testing.TB, name string) string {
	t.Helper()
	root, err := RepoRoot()
	if err != nil {
		Missing(t, "%s: %v: run hack/setup.sh --tests", name, err)
	}
	p := filepath.Join(root, "bin", name)
	if fi, err := os.Stat(p); err != nil || fi.IsDir() {
		Missing(t, "%s not found at %s: run hack/setup.sh --tests (make test does)", name, p)
	}
	return p
}

func modulePath(gomod string) string {
	f, err := os.Open(gomod)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "module "); ok {
			return strings.Trim(strings.TrimSpace(rest), `"`)
		}
	}
	return ""
}
