package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"buf.build/gen/go/depot/api/connectrpc/go/depot/core/v1/corev1connect"
	corev1 "buf.build/gen/go/depot/api/protocolbuffers/go/depot/core/v1"
	"connectrpc.com/connect"
	cliv1 "github.com/depot/depot-go/proto/depot/cli/v1"
	"github.com/depot/depot-go/proto/depot/cli/v1/cliv1connect"

	"github.com/kiln-dev/kiln/internal/blob/s3test"
	"github.com/kiln-dev/kiln/internal/store/pgtest"
	"github.com/kiln-dev/kiln/internal/testenv"
)

// W6: kiln's control plane on its store and across replicas (issue 18).
// Two measures, each on two pairs of setups:
//
//   - builder acquire: CreateBuild → GetBuildKitConnection active, the
//     project's builder running (as W5.running);
//   - API requests per second: rpsClients concurrent callers alternating
//     depot.core.v1 GetBuild and depot.cli.v1 ListBuilds with the
//     organization's token, for rpsWindow per run.
//
// The pairs: SQLite (the "baseline" column) against Postgres (the "kiln"
// column), one kiln serve each; and one Postgres kiln serve against two
// replicas on one Postgres database (--cluster-key-file), whose requests
// alternate between the replicas as a load balancer's would. Every server
// is kiln serve with default flags and its own data directory (the
// replicas keep images and contexts in a versitygw on loopback, which
// neither measure touches); the Postgres server is pgtest's (unix socket,
// fsync off), on this machine.
func (r *runner) w6(ctx context.Context) error {
	r.logf("  starting Postgres")
	pg, err := pgtest.StartStandalone()
	if errors.Is(err, pgtest.ErrMissing) && testenv.SkipMissing() {
		// As the tests do with KILN_SKIP_MISSING=1: the rows say why
		// they have no numbers.
		for _, id := range []string{"W6.acquire.store", "W6.rps.store", "W6.acquire.replicas", "W6.rps.replicas"} {
			p := newPair(id, "W6 "+id[3:], "")
			p.Pending = "Postgres is not installed (apt-get install postgresql, or hack/setup.sh --tests)"
			r.record(p)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("postgres (KILN_SKIP_MISSING=1 leaves W6 unmeasured): %w", err)
	}
	r.onCleanup(pg.Stop)

	lite, err := startKiln(ctx, r.kilnBin, r.cfg.buildkitd, filepath.Join(r.state, "w6-sqlite"))
	if err != nil {
		return err
	}
	r.onCleanup(lite.stop)
	one, err := r.w6Postgres(ctx, pg, "w6_one", false)
	if err != nil {
		return err
	}
	two, err := r.w6Postgres(ctx, pg, "w6_two", true)
	if err != nil {
		return err
	}
	setups := map[string]*w6Setup{}
	for name, servers := range map[string][]*kilnServer{"sqlite": {lite}, "postgres": one, "replicas": two} {
		st, err := newW6Setup(ctx, name, servers)
		if err != nil {
			return err
		}
		setups[name] = st
	}

	for _, c := range []struct{ id, what, base, kiln string }{
		{"store", "SQLite vs Postgres", "sqlite", "postgres"},
		{"replicas", "one Postgres replica vs two", "postgres", "replicas"},
	} {
		base, other := setups[c.base], setups[c.kiln]
		if r.wants("W6.acquire") || r.wants("W6.acquire."+c.id) {
			p := newPair("W6.acquire."+c.id, "W6 acquire, builder running: "+c.what, "ms")
			p.Note = fmt.Sprintf("baseline column: %s; kiln column: %s. CreateBuild → GetBuildKitConnection active (builder running).", base.desc(), other.desc())
			err := r.series(ctx, p, func(i int, s side) (float64, error) {
				st := base
				if s == sideKiln {
					st = other
				}
				return st.acquire(ctx, i)
			})
			if err != nil {
				return err
			}
		}
		if r.wants("W6.rps") || r.wants("W6.rps."+c.id) {
			window := r.rpsWindow()
			p := newPair("W6.rps."+c.id, "W6 API requests per second: "+c.what, "req/s")
			p.HigherIsBetter = true
			p.Note = fmt.Sprintf("baseline column: %s; kiln column: %s. %d concurrent callers, GetBuild and ListBuilds alternating, org token, %s per run.",
				base.desc(), other.desc(), rpsClients, window)
			err := r.series(ctx, p, func(i int, s side) (float64, error) {
				st := base
				if s == sideKiln {
					st = other
				}
				return st.rps(ctx, window)
			})
			if err != nil {
				return err
			}
		}
	}
	return nil
}

const rpsClients = 8

// rpsWindow is how long one requests-per-second run lasts.
func (r *runner) rpsWindow() time.Duration {
	if r.cfg.smoke {
		return 500 * time.Millisecond
	}
	return 2 * time.Second
}

// w6Postgres starts one kiln serve on a new database of pg, or two
// replicas sharing one (a cluster key, replica ids r1 and r2, each
// advertising its own address). The second replica is given the admin
// token the first one wrote, as an operator copies it.
func (r *runner) w6Postgres(ctx context.Context, pg *pgtest.Standalone, db string, replicas bool) ([]*kilnServer, error) {
	url, err := pg.NewDatabase(db)
	if err != nil {
		return nil, err
	}
	if !replicas {
		k, err := startKiln(ctx, r.kilnBin, r.cfg.buildkitd, filepath.Join(r.state, db), "--store", url)
		if err != nil {
			return nil, err
		}
		r.onCleanup(k.stop)
		return []*kilnServer{k}, nil
	}
	// Replicas keep images and uploaded contexts in S3 (one replica's
	// disk is its own): a versitygw on loopback.
	gw, err := s3test.StartStandalone(filepath.Join(r.root, "bin", "versitygw"), filepath.Join(r.tmp, db+"-s3"))
	if err != nil {
		return nil, err
	}
	r.onCleanup(gw.Stop)
	env := []string{"AWS_ACCESS_KEY_ID=" + gw.AccessKey, "AWS_SECRET_ACCESS_KEY=" + gw.SecretKey,
		"KILN_S3_ACCESS_KEY=" + gw.AccessKey, "KILN_S3_SECRET_KEY=" + gw.SecretKey}
	key := filepath.Join(r.tmp, db+".key")
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	if err := os.WriteFile(key, []byte(hex.EncodeToString(b)+"\n"), 0o600); err != nil {
		return nil, err
	}
	var out []*kilnServer
	for _, id := range []string{"r1", "r2"} {
		data := filepath.Join(r.state, db+"-"+id)
		if len(out) > 0 {
			// Only the replica that bootstrapped the organization writes
			// the token; startKiln reads it from the data directory.
			if err := os.MkdirAll(data, 0o700); err != nil {
				return nil, err
			}
			if err := os.WriteFile(filepath.Join(data, "admin.token"), []byte(out[0].Token+"\n"), 0o600); err != nil {
				return nil, err
			}
		}
		k, err := startKilnEnv(ctx, r.kilnBin, r.cfg.buildkitd, data, env, "--store", url,
			"--cluster-key-file", key, "--replica-id", id, "--advertise-url", "http://"+addrPlaceholder,
			"--registry-s3-bucket", gw.Bucket, "--registry-s3-endpoint", gw.Endpoint, "--registry-s3-region", gw.Region,
			"--contexts-s3-bucket", gw.Bucket, "--contexts-s3-endpoint", gw.Endpoint, "--contexts-s3-region", gw.Region,
			"--contexts-s3-prefix", "contexts/")
		if err != nil {
			return nil, err
		}
		r.onCleanup(k.stop)
		out = append(out, k)
	}
	return out, nil
}

// w6Setup is one measured setup: its servers (a request goes to each in
// turn), a project with a running builder, and the builds made in it.
type w6Setup struct {
	name    string
	servers []*kilnServer
	project string
	builds  []string
	next    atomic.Int64 // round robin over servers
	http    *http.Client
}

func newW6Setup(ctx context.Context, name string, servers []*kilnServer) (*w6Setup, error) {
	st := &w6Setup{name: name, servers: servers,
		http: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 2 * rpsClients}}}
	var err error
	if st.project, err = servers[0].createProject(ctx, "bench-w6-"+name); err != nil {
		return nil, err
	}
	// Warm: every server acquires the builder once (the first starts it),
	// untimed.
	for i := range servers {
		if _, err := st.acquire(ctx, i); err != nil {
			return nil, fmt.Errorf("%s: warm-up: %w", name, err)
		}
	}
	return st, nil
}

func (st *w6Setup) desc() string {
	switch st.name {
	case "sqlite":
		return "one kiln serve on SQLite"
	case "postgres":
		return "one kiln serve on Postgres"
	}
	return fmt.Sprintf("%d replicas on one Postgres, requests alternating", len(st.servers))
}

// acquire times one builder acquisition through server i (mod the
// setup's servers) and records the build for the requests series.
func (st *w6Setup) acquire(ctx context.Context, i int) (float64, error) {
	k := st.servers[i%len(st.servers)]
	a, err := k.acquire(ctx, st.project, 60*time.Second, 0)
	if err != nil {
		return 0, err
	}
	k.finish(a)
	st.builds = append(st.builds, a.remote.ID)
	return ms(a.Took), nil
}

// rps runs rpsClients callers for window and returns requests answered
// per second. Any failed request fails the run.
func (st *w6Setup) rps(ctx context.Context, window time.Duration) (float64, error) {
	if len(st.builds) == 0 {
		return 0, errors.New("no builds to read")
	}
	// Requests run on ctx, not on the window: a deadline on them would
	// reach the server (connect sends it), which may answer
	// deadline_exceeded first. A request still in flight at the window's
	// end finishes uncounted.
	var done atomic.Int64
	var wg sync.WaitGroup
	errs := make([]error, rpsClients)
	start := time.Now()
	end := start.Add(window)
	for c := range rpsClients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; time.Now().Before(end) && ctx.Err() == nil; n++ {
				k := st.servers[int(st.next.Add(1))%len(st.servers)]
				var err error
				if n%2 == 0 {
					req := connect.NewRequest(&corev1.GetBuildRequest{BuildId: st.builds[(c+n)%len(st.builds)]})
					req.Header().Set("Authorization", "Bearer "+k.Token)
					_, err = corev1connect.NewBuildServiceClient(st.http, k.URL).GetBuild(ctx, req)
				} else {
					req := connect.NewRequest(&cliv1.ListBuildsRequest{ProjectId: st.project})
					req.Header().Set("Authorization", "Bearer "+k.Token)
					_, err = cliv1connect.NewBuildServiceClient(st.http, k.URL).ListBuilds(ctx, req)
				}
				if err != nil {
					errs[c] = err
					return
				}
				if time.Now().Before(end) {
					done.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return 0, fmt.Errorf("%s: %w", st.name, err)
	}
	return float64(done.Load()) / window.Seconds(), nil
}
