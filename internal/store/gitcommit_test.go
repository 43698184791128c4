package store

import (
	"context"
	"database/sql"
	"io/fs"
	"path/filepath"
	"testing"
	"time"

	"github.com/pressly/goose/v3"

	"github.com/kiln-dev/kiln/internal/build"
)

// Migration 00014 adds builds.git_commit, NULL unless a commit is known,
// and its down migration drops it again.
func TestBuildGitCommitMigration(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "kiln.db")
	s, err := OpenSQLite(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	now := time.Now().UTC()
	for _, b := range []build.Build{
		{ID: "b-plain", ProjectID: "p", OrgID: "o", Status: build.Running, CreatedAt: now},
		{ID: "b-git", ProjectID: "p", OrgID: "o", Status: build.Running, CreatedAt: now, GitCommit: "0123456789abcdef0123456789abcdef01234567"},
	} {
		if err := s.CreateBuild(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	var isNull bool
	if err := s.db.QueryRowContext(ctx, `SELECT git_commit IS NULL FROM builds WHERE id = 'b-plain'`).Scan(&isNull); err != nil || !isNull {
		t.Errorf("a build without a commit stores git_commit NULL: null=%v err=%v", isNull, err)
	}
	if _, err := s.UpdateBuild(ctx, "b-plain", func(b *build.Build) error { b.GitCommit = "fedcba9876543210fedcba9876543210fedcba98"; return nil }); err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string]string{"b-plain": "fedcba9876543210fedcba9876543210fedcba98", "b-git": "0123456789abcdef0123456789abcdef01234567"} {
		if b, err := s.GetBuild(ctx, id); err != nil || b.GitCommit != want {
			t.Errorf("GetBuild %s: commit %q err %v; want %s", id, b.GitCommit, err, want)
		}
	}

	sub, _ := fs.Sub(migrations, "migrations")
	p, err := goose.NewProvider(goose.DialectSQLite3, s.db, sub)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.DownTo(ctx, 13); err != nil {
		t.Fatalf("down to 13: %v", err)
	}
	if err := s.db.QueryRowContext(ctx, `SELECT git_commit FROM builds LIMIT 1`).Scan(new(sql.NullString)); err == nil {
		t.Error("git_commit is still there after the down migration")
	}
	if _, err := p.Up(ctx); err != nil {
		t.Fatalf("up again: %v", err)
	}
	if b, err := s.GetBuild(ctx, "b-git"); err != nil || b.GitCommit != "" {
		t.Errorf("after down and up: commit %q err %v; want none", b.GitCommit, err)
	}
}
