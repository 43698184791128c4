package store_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/kiln-dev/kiln/internal/project"
	"github.com/kiln-dev/kiln/internal/store"
	"github.com/kiln-dev/kiln/internal/store/storetest"
)

func TestSQLiteConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		s, err := store.OpenSQLite(context.Background(), filepath.Join(t.TempDir(), "kiln.db"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
}

// Migrations run once: reopening an existing database keeps its data.
func TestSQLiteReopenKeepsData(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "kiln.db")
	s, err := store.OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	s.CreateOrganization(ctx, project.Organization{ID: "o", Name: "o"})
	s.Close()
	s, err = store.OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.GetOrganization(ctx, "o"); err != nil {
		t.Errorf("after reopen: %v", err)
	}
}

// The database and the files SQLite keeps beside it are the owner's only,
// also when an older kiln left them readable by others.
func TestSQLiteFilesOwnerOnly(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "kiln.db")
	check := func(when string) {
		t.Helper()
		entries, _ := os.ReadDir(dir)
		if len(entries) < 3 {
			t.Fatalf("%s: want kiln.db, -wal and -shm, have %d files", when, len(entries))
		}
		for _, e := range entries {
			fi, err := e.Info()
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm()&0o077 != 0 {
				t.Errorf("%s: %s is mode %v, want 0600", when, e.Name(), fi.Mode().Perm())
			}
		}
	}
	st, err := store.OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.CreateOrganization(ctx, project.Organization{ID: "o1", Name: "o1"}); err != nil {
		t.Fatal(err)
	}
	check("new database")
	st.Close()

	// As an older kiln left it: the database 0644, and a (empty) WAL too.
	os.Chmod(path, 0o644)
	if f, err := os.OpenFile(path+"-wal", os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644); err == nil {
		f.Close()
	}
	os.Chmod(path+"-wal", 0o644)
	st, err = store.OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := st.GetOrganization(ctx, "o1"); err != nil {
		t.Fatal(err)
	}
	check("database left 0644")
}
