package store_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/store"
)

// The locations kiln serve --store takes.
func TestSQLitePath(t *testing.T) {
	data := t.TempDir()
	file := filepath.Join(t.TempDir(), "other.db")
	for _, tc := range []struct{ location, want string }{
		{"", filepath.Join(data, "kiln.db")},
		{"sqlite:", filepath.Join(data, "kiln.db")},
		{"sqlite:" + data, filepath.Join(data, "kiln.db")},
		{"sqlite://" + data, filepath.Join(data, "kiln.db")},
		{"sqlite:" + file, file},
	} {
		if got, ok := store.SQLitePath(tc.location, data); !ok || got != tc.want {
			t.Errorf("SQLitePath(%q) = %q, %v; want %q", tc.location, got, ok, tc.want)
		}
	}
	if _, ok := store.SQLitePath("postgres://db/kiln", data); ok {
		t.Error("a postgres URL is a SQLite path")
	}
	if _, err := store.Open(context.Background(), "mysql://db/kiln", data); !errdefs.IsInvalid(err) {
		t.Errorf("Open(mysql://…): %v, want ErrInvalid", err)
	}
	s, err := store.Open(context.Background(), "sqlite:"+file, data)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := os.Stat(file); err != nil {
		t.Errorf("sqlite:%s did not open that file: %v", file, err)
	}
}
