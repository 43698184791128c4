package engine

import (
	"os"
	"path/filepath"
	"testing"
)

// Two contexts never share the builder's record of the last transfer, so
// files of equal size and time in the second are still sent; one context
// built again does, so only what changed is sent.
func TestSharedKeyPerContext(t *testing.T) {
	key := func(dir string) string {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte("FROM scratch\nCOPY id /id\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		r, err := prepareOptions(Options{ContextPath: dir})
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		opt, err := r.sessionSolveOpt(nil)
		if err != nil {
			t.Fatal(err)
		}
		if opt.SharedKey == "" {
			t.Fatal("no shared key: every client of a builder would share BuildKit's empty one")
		}
		return opt.SharedKey
	}
	a, b := t.TempDir(), t.TempDir()
	ka, kb := key(a), key(b)
	if ka == kb {
		t.Fatalf("two contexts share the key %s", ka)
	}
	if again := key(a); again != ka {
		t.Fatalf("one context's key changed between builds: %s then %s", ka, again)
	}
}
