package store

import (
	"context"
	"errors"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/build"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/project"
)

// fillDatabase makes every write that needs a new page fail with
// SQLITE_FULL, as a full disk does, by capping the database at the pages
// it has (the store keeps one connection, so the pragma holds for every
// statement); room gives the room back.
func fillDatabase(t *testing.T, s *SQL) (room func()) {
	t.Helper()
	// A checkpoint first: pages still in the WAL would otherwise count
	// only when moved into the database.
	if _, err := s.db.Exec(`PRAGMA wal_checkpoint(TRUNCATE)`); err != nil {
		t.Fatal(err)
	}
	var pages int
	if err := s.db.QueryRow(`PRAGMA page_count`).Scan(&pages); err != nil {
		t.Fatal(err)
	}
	if _, err := s.db.Exec(`PRAGMA max_page_count = ` + strconv.Itoa(pages)); err != nil {
		t.Fatal(err)
	}
	return func() {
		if _, err := s.db.Exec(`PRAGMA max_page_count = 1073741823`); err != nil {
			t.Fatal(err)
		}
	}
}

func openFull(t *testing.T) (*SQL, string) {
	t.Helper()
	dir := t.TempDir()
	s, err := OpenSQLite(context.Background(), filepath.Join(dir, "kiln.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	ctx := context.Background()
	if err := s.CreateOrganization(ctx, project.Organization{ID: "o", Name: "o"}); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateProject(ctx, project.Project{ID: "p", OrgID: "o", Name: "p"}); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for _, id := range []string{"b1", "b2"} {
		if err := s.CreateBuild(ctx, build.Build{ID: id, ProjectID: "p", OrgID: "o", Status: build.Running, CreatedAt: now, StartedAt: now}); err != nil {
			t.Fatal(err)
		}
	}
	return s, dir
}

// A write a full disk refuses is errdefs.DiskFull: ResourceExhausted at
// the edge, saying what happened and what to do, naming no path. When room
// returns, the very next write succeeds.
func TestDiskFullRecovers(t *testing.T) {
	ctx := context.Background()
	s, dir := openFull(t)
	room := fillDatabase(t, s)
	big := strings.Repeat("x", 64<<10)
	err := s.CreateBuild(ctx, build.Build{ID: "b3", ProjectID: "p", OrgID: "o", Status: build.Running, Options: big})
	if !errdefs.IsDiskFull(err) || !errors.Is(err, errdefs.ErrExhausted) {
		t.Fatalf("a write to a full database: %v; want DiskFull (and ErrExhausted)", err)
	}
	if !strings.HasPrefix(err.Error(), "kiln's data disk is full (") || !strings.Contains(err.Error(), "bytes free)") || strings.Contains(err.Error(), dir) {
		t.Errorf("message %q: want \"kiln's data disk is full (N bytes free)…\" and no path", err)
	}
	if err := s.AppendLogs(ctx, "b1", []build.LogLine{{Digest: "d", Message: big}}); !errdefs.IsDiskFull(err) {
		t.Errorf("a transaction on a full database: %v; want DiskFull", err)
	}
	room()
	if err := s.CreateBuild(ctx, build.Build{ID: "b3", ProjectID: "p", OrgID: "o", Status: build.Running, Options: big}); err != nil {
		t.Errorf("the first write after room returned: %v", err)
	}
	if err := s.AppendLogs(ctx, "b1", []build.LogLine{{Digest: "d", Message: big}}); err != nil {
		t.Errorf("the first transaction after room returned: %v", err)
	}
}

// A build's end that a full disk refuses is not lost: reads show the build
// ended at once, a later end does not replace it (the first end wins), and
// it is written to the database as soon as there is room.
func TestDiskFullKeepsBuildEnd(t *testing.T) {
	ctx := context.Background()
	s, _ := openFull(t)
	room := fillDatabase(t, s)
	msg := strings.Repeat("the client's own words ", 4000) // needs new pages
	end := func(st build.Status, why string) func(*build.Build) error {
		return func(b *build.Build) error {
			if b.Transition(st, time.Now()) == nil {
				b.Error = why
			}
			return nil
		}
	}
	b, err := s.UpdateBuild(ctx, "b1", end(build.Failed, msg))
	if err != nil || b.Status != build.Failed {
		t.Fatalf("ending a build on a full disk: %v, %s; want it kept and answered", err, b.Status)
	}
	if n := s.PendingEnds(); n != 1 {
		t.Errorf("PendingEnds = %d, want 1", n)
	}
	// Not an end: refused as a full disk.
	if _, err := s.UpdateBuild(ctx, "b2", func(b *build.Build) error { b.Secrets = msg; return nil }); !errdefs.IsDiskFull(err) {
		t.Errorf("a non-end update on a full disk: %v; want DiskFull", err)
	}
	got, err := s.GetBuild(ctx, "b1")
	if err != nil || got.Status != build.Failed || got.Error != msg || got.FinishedAt.IsZero() {
		t.Errorf("GetBuild of the kept end: %s %v", got.Status, err)
	}
	running, _ := s.ListBuildsByStatus(ctx, build.Running)
	if len(running) != 1 || running[0].ID != "b2" {
		t.Errorf("running builds: %v, want only b2", running)
	}
	if ended, _ := s.BuildEnded(ctx, "b1"); !ended {
		t.Errorf("BuildEnded(b1) = false: its build token would still work")
	}
	if b, _ := s.UpdateBuild(ctx, "b1", end(build.Canceled, "reaped")); b.Status != build.Failed || b.Error != msg {
		t.Errorf("a second end replaced the first: %s %q", b.Status, b.Error)
	}

	room()
	deadline := time.Now().Add(10 * time.Second)
	for s.PendingEnds() > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the kept end was not written within 10s of room returning")
		}
		time.Sleep(50 * time.Millisecond)
	}
	var status, why string
	if err := s.db.QueryRow(`SELECT status, error FROM builds WHERE id = 'b1'`).Scan(&status, &why); err != nil || status != string(build.Failed) || why != msg {
		t.Errorf("in the database: %s (%d bytes of error), %v; want failed with the client's message", status, len(why), err)
	}
}
