// Package pgtest gives tests a real Postgres: one server per test binary,
// started on first use in a temporary directory, listening only on a unix
// socket there, and a fresh database for each test that asks.
//
//	func TestMain(m *testing.M) { pgtest.Main(m) } // or code := pgtest.Run(m) in a TestMain doing more
//
//	func TestX(t *testing.T) {
//		url := pgtest.NewDatabase(t) // postgres://…, an empty database
//	}
//
// It runs Debian's PostgreSQL (apt-get install postgresql, which
// hack/setup.sh --tests does); the binaries are found on PATH, under
// /usr/lib/postgresql/*/bin, or in $KILN_POSTGRES_BIN. Postgres refuses to
// run as root, so a root test binary runs the server as the "postgres"
// system user. A missing Postgres fails the test (testenv.Missing). The
// server is stopped by its process id when the test binary's tests end.
//
// It is a test helper: it imports "testing" and must not be imported by
// kiln's own code.
package pgtest

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" database/sql driver

	"github.com/kiln-dev/kiln/internal/testenv"
)

// server is the test binary's Postgres, guarded by mu.
var (
	mu      sync.Mutex
	inMain  bool    // Main runs the tests: it stops the server after them
	running *server // started on first use
	failed  error   // the first start failed: every later use fails alike
	missing string  // what is missing, if that is why it failed
	nextDB  int
)

// Main runs the test binary's tests, then stops the Postgres server if a
// test started one, and exits. Call it from TestMain.
func Main(m *testing.M) { os.Exit(Run(m)) }

// Run is Main for a TestMain that does more: it runs the tests, stops the
// server and returns m.Run's exit code.
func Run(m *testing.M) int {
	mu.Lock()
	inMain = true
	mu.Unlock()
	code := m.Run()
	mu.Lock()
	if running != nil {
		running.stop()
		running = nil
	}
	mu.Unlock()
	return code
}

// NewDatabase creates an empty database on the test binary's server
// (starting it on first use) and returns its URL.
func NewDatabase(t testing.TB) string {
	t.Helper()
	mu.Lock()
	defer mu.Unlock()
	if !inMain {
		t.Fatal("pgtest: the package's TestMain must call pgtest.Main(m) or pgtest.Run(m), which stop the server")
	}
	if running == nil && failed == nil {
		running, missing, failed = start()
	}
	if missing != "" {
		testenv.Missing(t, "%s", missing)
	}
	if failed != nil {
		t.Fatalf("pgtest: %v", failed)
	}
	nextDB++
	name := fmt.Sprintf("kiln_test_%d", nextDB)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// template0 and C: empty, and text sorted bytewise as SQLite does.
	if _, err := running.admin.ExecContext(ctx, `CREATE DATABASE `+name+` TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'`); err != nil {
		t.Fatalf("pgtest: create database: %v", err)
	}
	return running.url(name)
}

// server is a running Postgres.
type server struct {
	dir    string // temporary: the data directory and the socket
	socket string // the directory of the unix socket
	cmd    *exec.Cmd
	exited chan struct{} // closed when the postmaster exits
	admin  *sql.DB       // connected to the "postgres" database as its superuser
}

func (s *server) url(db string) string {
	u := url.URL{Scheme: "postgres", User: url.User("postgres"), Path: "/" + db,
		RawQuery: url.Values{"host": {s.socket}, "sslmode": {"disable"}}.Encode()}
	return u.String()
}

// binDir finds the directory holding initdb and postgres; "" if there is none.
func binDir() string {
	if d := os.Getenv("KILN_POSTGRES_BIN"); d != "" {
		if _, err := os.Stat(filepath.Join(d, "postgres")); err != nil {
			return ""
		}
		return d
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		if _, err := exec.LookPath("postgres"); err == nil {
			return filepath.Dir(p)
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(dirs, func(a, b string) int { return version(b) - version(a) }) // newest first
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "postgres")); err == nil {
			return d
		}
	}
	return ""
}

// sweep removes the clusters of test binaries that died without stopping
// theirs (a go test timeout, SIGKILL): kiln-pg-* directories whose
// postmaster.pid names no live process, or that have none and are older
// than an hour.
func sweep(parent string) {
	dirs, _ := filepath.Glob(filepath.Join(parent, "kiln-pg-*"))
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, "data", "postmaster.pid"))
		if err != nil {
			if fi, serr := os.Stat(d); serr == nil && time.Since(fi.ModTime()) > time.Hour {
				_ = os.RemoveAll(d)
			}
			continue
		}
		first, _, _ := strings.Cut(string(b), "\n")
		pid, err := strconv.Atoi(strings.TrimSpace(first))
		if err != nil || pid <= 0 {
			continue
		}
		if syscall.Kill(pid, 0) == syscall.ESRCH {
			_ = os.RemoveAll(d)
		}
	}
}

// version is the major version in /usr/lib/postgresql/<version>/bin.
func version(dir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(dir)))
	return v
}

// start initialises a cluster in a temporary directory and starts its
// postmaster; missing says what to install when Postgres is not there.
func start() (_ *server, missing string, _ error) {
	bin := binDir()
	if bin == "" {
		return nil, "postgres not found (on PATH, under /usr/lib/postgresql/*/bin or in $KILN_POSTGRES_BIN): apt-get install postgresql, or run hack/setup.sh --tests", errors.New("postgres missing")
	}
	var cred *syscall.Credential
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, "Postgres refuses to run as root and there is no postgres system user: apt-get install postgresql creates it", err
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	// A unix socket's path is at most 107 bytes: a long $TMPDIR won't do.
	parent := os.TempDir()
	if len(parent) > 60 {
		parent = "/tmp"
	}
	sweep(parent)
	dir, err := os.MkdirTemp(parent, "kiln-pg-")
	if err != nil {
		return nil, "", err
	}
	s := &server{dir: dir, socket: filepath.Join(dir, "run"), exited: make(chan struct{})}
	ok := false
	defer func() {
		if !ok {
			s.stop()
		}
	}()
	data := filepath.Join(dir, "data")
	if err := os.Mkdir(s.socket, 0o700); err != nil {
		return nil, "", err
	}
	if cred != nil {
		for _, d := range []string{dir, s.socket} {
			if err := os.Chown(d, int(cred.Uid), int(cred.Gid)); err != nil {
				return nil, "", err
			}
		}
	}
	initdb := exec.Command(filepath.Join(bin, "initdb"), "-D", data, "-U", "postgres", "--auth=trust",
		"--no-locale", "--encoding=UTF8", "--no-sync")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	initdb.Dir = dir
	if out, err := initdb.CombinedOutput(); err != nil {
		return nil, "", fmt.Errorf("initdb: %v: %s", err, out)
	}
	logf, err := os.Create(filepath.Join(dir, "postgres.log"))
	if err != nil {
		return nil, "", err
	}
	defer logf.Close()
	// No TCP at all (listen_addresses ''): the socket in a 0700 directory
	// is reachable by this process only. Durability is not a test's need.
	s.cmd = exec.Command(filepath.Join(bin, "postgres"), "-D", data, "-k", s.socket, "-c", "listen_addresses=",
		"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off", "-c", "max_connections=200")
	// Pdeathsig: a test binary that dies without stopping the server
	// (killed by go test's timeout) takes it down too.
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred, Setpgid: true, Pdeathsig: syscall.SIGINT}
	s.cmd.Stdout, s.cmd.Stderr, s.cmd.Dir = logf, logf, dir
	if err := s.cmd.Start(); err != nil {
		return nil, "", fmt.Errorf("start postgres: %w", err)
	}
	go func() { s.cmd.Wait(); close(s.exited) }()

	s.admin, err = sql.Open("pgx", s.url("postgres"))
	if err != nil {
		return nil, "", err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err = s.admin.PingContext(ctx)
		cancel()
		if err == nil {
			break
		}
		select {
		case <-s.exited:
			log, _ := os.ReadFile(filepath.Join(dir, "postgres.log"))
			return nil, "", fmt.Errorf("postgres exited: %s", log)
		default:
		}
		if time.Now().After(deadline) {
			return nil, "", fmt.Errorf("postgres did not accept connections within 30s: %w", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	ok = true
	return s, "", nil
}

// stop shuts the postmaster down (a fast shutdown: SIGINT to its process
// id, then SIGKILL to it and its children after 10 s) and removes the
// temporary directory.
func (s *server) stop() {
	if s.admin != nil {
		s.admin.Close()
	}
	if s.cmd != nil && s.cmd.Process != nil {
		s.cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-s.exited:
		case <-time.After(10 * time.Second):
			// Its process group: the backends it started (Setpgid).
			syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
			<-s.exited
		}
	}
	os.RemoveAll(s.dir)
}
