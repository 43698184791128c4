package store_test

import (
	"context"
	"database/sql"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/project"
	"github.com/kiln-dev/kiln/internal/store"
	"github.com/kiln-dev/kiln/internal/store/pgtest"
	"github.com/kiln-dev/kiln/internal/store/storetest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func openPostgres(t *testing.T, url string) *store.SQL {
	t.Helper()
	s, err := store.OpenPostgres(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestPostgresConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		return openPostgres(t, pgtest.NewDatabase(t))
	})
}

// Both databases report the same schema version: the migrations are one
// set of files.
func TestPostgresSchemaVersion(t *testing.T) {
	ctx := context.Background()
	pg := openPostgres(t, pgtest.NewDatabase(t))
	lite, err := store.OpenSQLite(ctx, t.TempDir()+"/kiln.db")
	if err != nil {
		t.Fatal(err)
	}
	defer lite.Close()
	pv, err := pg.SchemaVersion(ctx)
	if err != nil {
		t.Fatal(err)
	}
	lv, err := lite.SchemaVersion(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if pv != lv || pv == 0 {
		t.Errorf("schema version: postgres %d, sqlite %d", pv, lv)
	}
}

// Migrations run once: reopening keeps the data, and two stores opening
// one new database at once (replicas starting together) both succeed.
func TestPostgresReopenAndConcurrentOpen(t *testing.T) {
	ctx := context.Background()
	url := pgtest.NewDatabase(t)
	errs := make(chan error, 2)
	for range 2 {
		go func() {
			s, err := store.OpenPostgres(ctx, url)
			if err == nil {
				s.Close()
			}
			errs <- err
		}()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatalf("concurrent open: %v", err)
		}
	}
	s := openPostgres(t, url)
	if err := s.CreateOrganization(ctx, project.Organization{ID: "o", Name: "o"}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = openPostgres(t, url)
	if _, err := s.GetOrganization(ctx, "o"); err != nil {
		t.Errorf("after reopen: %v", err)
	}
}

// One Exclusive store per database: a second kiln serve on it is refused
// until the first closes.
func TestPostgresExclusive(t *testing.T) {
	ctx := context.Background()
	url := pgtest.NewDatabase(t)
	first, err := store.OpenPostgres(ctx, url, store.Exclusive())
	if err != nil {
		t.Fatal(err)
	}
	if s, err := store.OpenPostgres(ctx, url, store.Exclusive()); !errors.Is(err, errdefs.ErrUnavailable) {
		if err == nil {
			s.Close()
		}
		t.Fatalf("second exclusive open: %v, want ErrUnavailable", err)
	}
	// Others (kiln store migrate's checks, tools) may still open it.
	openPostgres(t, url)
	first.Close()
	// At once: Close gives the lock back rather than leaving it to the
	// backend's exit.
	again, err := store.OpenPostgres(ctx, url, store.Exclusive())
	if err != nil {
		t.Fatalf("exclusive open after the first closed: %v", err)
	}
	again.Close()
}

// The lock follows its connection: killed (a Postgres restart, a parted
// network), the store takes the lock again on a new one; if another server
// took it in between, the store says it lost it (Lost), and its server
// stops.
func TestPostgresExclusiveLockLost(t *testing.T) {
	ctx := context.Background()
	url := pgtest.NewDatabase(t)
	first, err := store.OpenPostgres(ctx, url, store.Exclusive())
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	admin, err := sql.Open("pgx", url)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	kill := func() {
		t.Helper()
		if _, err := admin.ExecContext(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
			WHERE datname = current_database() AND pid <> pg_backend_pid()`); err != nil {
			t.Fatal(err)
		}
	}

	// Killed with nobody waiting: taken again within the watch's tick.
	kill()
	time.Sleep(7 * time.Second)
	var held bool
	if err := admin.QueryRowContext(ctx, `SELECT count(*) > 0 FROM pg_locks WHERE locktype = 'advisory' AND granted`).Scan(&held); err != nil || !held {
		t.Fatalf("the lock was not taken again after its connection was killed (held %v, %v)", held, err)
	}
	select {
	case <-first.Lost():
		t.Fatal("Lost closed although nobody else took the lock")
	default:
	}

	// Killed, and another server takes it first: Lost.
	kill()
	second, err := store.OpenPostgres(ctx, url, store.Exclusive())
	if err != nil {
		t.Fatalf("a second server could not take the lock its first holder lost: %v", err)
	}
	defer second.Close()
	select {
	case <-first.Lost():
	case <-time.After(30 * time.Second):
		t.Fatal("the first store did not report losing its lock")
	}
}

// A TryLock whose connection breaks (Postgres restarted, a proxy cut it)
// is lost: its held context ends with ErrLockLost, so the work under it
// stops, and another holder can take it.
func TestPostgresTryLockLost(t *testing.T) {
	ctx := context.Background()
	url := pgtest.NewDatabase(t)
	st, err := store.OpenPostgres(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	admin, err := sql.Open("pgx", url)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	held, unlock, ok, err := st.TryLock(ctx, "registry-gc")
	if err != nil || !ok {
		t.Fatalf("lock: %v %v", ok, err)
	}
	defer unlock()
	if _, err := admin.ExecContext(ctx, `SELECT pg_terminate_backend(l.pid) FROM pg_locks l
		WHERE l.locktype = 'advisory' AND l.granted AND l.pid <> pg_backend_pid()`); err != nil {
		t.Fatal(err)
	}
	select {
	case <-held.Done():
		if !errors.Is(context.Cause(held), store.ErrLockLost) {
			t.Errorf("cause %v, want ErrLockLost", context.Cause(held))
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the lock's context did not end after its connection was killed")
	}
	_, again, ok, err := st.TryLock(ctx, "registry-gc")
	if err != nil || !ok {
		t.Fatalf("the lost lock could not be taken again: %v %v", ok, err)
	}
	again()
}

// An observed Postgres store (kiln serve's) rewrites its queries below the
// timing, and the observer hears of queries, execs and transactions.
func TestPostgresObserved(t *testing.T) {
	ctx := context.Background()
	var mu sync.Mutex
	ops := map[string]int{}
	s, err := store.OpenPostgres(ctx, pgtest.NewDatabase(t), store.WithObserver(func(op string, d time.Duration) {
		mu.Lock()
		ops[op]++
		mu.Unlock()
	}))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.CreateOrganization(ctx, project.Organization{ID: "o", Name: "o"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetOrganization(ctx, "o"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteProject(ctx, "nope"); !errdefs.IsNotFound(err) {
		t.Fatalf("DeleteProject(nope): %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, op := range []string{store.OpQuery, store.OpExec, store.OpTx} {
		if ops[op] == 0 {
			t.Errorf("no %s observed (%v)", op, ops)
		}
	}
}

// A database that cannot be reached is errdefs.ErrUnavailable (clients
// retry), and the store recovers once it is back: here, its connections
// killed from another session as a Postgres restart would.
func TestPostgresUnreachable(t *testing.T) {
	ctx := context.Background()
	_, err := store.OpenPostgres(ctx, "postgres://kiln:pw@/kiln?host="+t.TempDir()+"&connect_timeout=2")
	if !errdefs.IsUnavailable(err) || strings.Contains(err.Error(), "pw@") {
		t.Errorf("open of a missing server: %v, want ErrUnavailable without the password", err)
	}

	url := pgtest.NewDatabase(t)
	s := openPostgres(t, url)
	if err := s.CreateOrganization(ctx, project.Organization{ID: "o", Name: "o"}); err != nil {
		t.Fatal(err)
	}
	admin, err := sql.Open("pgx", url)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	if _, err := admin.ExecContext(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		WHERE datname = current_database() AND pid <> pg_backend_pid()`); err != nil {
		t.Fatal(err)
	}
	// The first use of a killed connection may fail, as Unavailable only.
	for i := range 20 {
		_, err = s.GetOrganization(ctx, "o")
		if err == nil {
			break
		}
		if !errdefs.IsUnavailable(err) {
			t.Fatalf("read after the connections were killed: %v, want ErrUnavailable or success", err)
		}
		if strings.Contains(err.Error(), "/") {
			t.Errorf("the message names the server: %q", err)
		}
		if i == 19 {
			t.Fatalf("the store did not recover: %v", err)
		}
	}
}

// The collation kiln serve warns about when it is not bytewise.
func TestPostgresCollation(t *testing.T) {
	ctx := context.Background()
	s := openPostgres(t, pgtest.NewDatabase(t))
	if c, err := s.Collation(ctx); err != nil || c != "C" {
		t.Errorf("pgtest's database collation %q, %v; want C", c, err)
	}
	lite, err := store.OpenSQLite(ctx, filepath.Join(t.TempDir(), "kiln.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer lite.Close()
	if c, _ := lite.Collation(ctx); c != "C" {
		t.Errorf("SQLite collation %q, want C", c)
	}
}
