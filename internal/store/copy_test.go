package store_test

import (
	"context"
	"database/sql"
	"errors"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/audit"
	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/build"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/login"
	"github.com/kiln-dev/kiln/internal/project"
	"github.com/kiln-dev/kiln/internal/store"
	"github.com/kiln-dev/kiln/internal/store/pgtest"
)

var t0 = time.UnixMilli(1_700_000_000_000).UTC()

// populate fills a store through its API with a little of everything an
// install holds.
func populate(t *testing.T, s store.Store) {
	t.Helper()
	ctx := context.Background()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(s.CreateOrganization(ctx, project.Organization{ID: "org", Name: "Acme", CreatedAt: t0}))
	must(s.CreateProject(ctx, project.Project{ID: "p1", OrgID: "org", Name: "app", KeepGB: 20, KeepDays: 7, CreatedAt: t0}))
	must(s.CreateProject(ctx, project.Project{ID: "p2", OrgID: "org", Name: "web", CreatedAt: t0.Add(time.Second), EgressAllow: []string{"10.9.0.0/16"}}))
	if _, _, err := s.GetOrCreateCustomerProject(ctx, project.Project{ID: "c1", OrgID: "org", Name: "customer", CustomerID: "cust-1", CreatedAt: t0}); err != nil {
		t.Fatal(err)
	}
	must(s.CreateToken(ctx, auth.Token{ID: "tok-org", Kind: auth.TokenOrg, OrgID: "org", Description: "admin", SecretHash: "h-org", CreatedAt: t0}))
	must(s.CreateToken(ctx, auth.Token{ID: "tok-p1", Kind: auth.TokenProject, OrgID: "org", ProjectID: "p1", SecretHash: "h-p1", CreatedAt: t0, ExpiresAt: t0.Add(time.Hour)}))
	must(s.CreateTrustPolicy(ctx, auth.TrustPolicy{ID: "tp1", ProjectID: "p1", OrgID: "org", Provider: auth.ProviderGitHub, Owner: "acme", Repo: "app",
		Ref: "refs/heads/main", Event: "push", Role: "build", CreatedAt: t0}))
	must(s.CreateToken(ctx, auth.Token{ID: "tok-job", Kind: auth.TokenProject, OrgID: "org", ProjectID: "p1", SecretHash: "h-job", CreatedAt: t0, PolicyIDs: []string{"tp1"}}))
	must(s.CreateBuild(ctx, build.Build{ID: "b1", ProjectID: "p1", OrgID: "org", Status: build.Running, Command: 2, Options: `{"x":1}`,
		CreatedAt: t0, StartedAt: t0.Add(time.Second), LastHealthAt: t0.Add(2 * time.Second), CreatedBy: "tok-p1", GitCommit: "abc123"}))
	must(s.CreateBuild(ctx, build.Build{ID: "b2", ProjectID: "c1", OrgID: "org", Status: build.Queued, Kind: build.KindSource, Spec: `{"file":"Dockerfile"}`,
		Secrets: "sealed", CreatedAt: t0.Add(time.Minute), PolicyIDs: []string{"tp1"}, Until: t0.Add(time.Hour)}))
	if _, err := s.UpdateBuild(ctx, "b1", func(b *build.Build) error {
		b.Status, b.FinishedAt, b.ImageRefs, b.ImageDigest = build.Succeeded, t0.Add(time.Minute), []string{"reg/app:1", "reg/app:latest"}, "sha256:aa"
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	must(s.PutSteps(ctx, "b1", []build.Step{
		{Digest: "sha256:s1", Name: "[1/2] FROM busybox", Cached: true, StartedAt: t0, CompletedAt: t0.Add(time.Second)},
		{Digest: "sha256:s2", Name: "[2/2] RUN make", StartedAt: t0.Add(time.Second), CompletedAt: t0.Add(time.Minute), Error: "exit 2"},
	}))
	must(s.AppendLogs(ctx, "b1", []build.LogLine{
		{Digest: "sha256:s2", At: t0.Add(2 * time.Second), Message: "compiling"},
		{Digest: "sha256:s2", At: t0.Add(3 * time.Second), Message: "done \x1b[0m ünïcode"},
	}))
	must(s.CreateBuildShare(ctx, build.Share{BuildID: "b1", Token: "share-token", CreatedBy: "tok-org", CreatedAt: t0}))
	must(s.PutResourceSamples(ctx, []build.ResourceSample{{BuildID: "b1", At: t0.Add(time.Second), Interval: time.Second, CPUCores: 1.5, Memory: 1 << 20, MemoryLimit: 1 << 30}}))
	must(s.PutResourceEvents(ctx, []build.ResourceEvent{{BuildID: "b1", At: t0.Add(time.Second), Kind: "oom", Message: "killed", Count: 1}}))
	must(s.PutRegistryManifest(ctx, store.RegistryManifest{Repo: "p1/app", Digest: "sha256:m1", ProjectID: "p1", MediaType: "application/vnd.oci.image.manifest.v1+json",
		Size: 512, TotalSize: 4096, Annotations: map[string]string{"org.opencontainers.image.source": "https://example.com"}, PushedAt: t0}, "latest"))
	must(s.PutRegistryManifest(ctx, store.RegistryManifest{Repo: "p1/app", Digest: "sha256:sig", ProjectID: "p1", ArtifactType: "application/vnd.dev.sigstore", Subject: "sha256:m1", PushedAt: t0}, ""))
	must(s.PutRegistrySettings(ctx, store.RegistrySettings{ProjectID: "p1", Retention: 72 * time.Hour}))
	must(s.CreateAuditEvent(ctx, audit.Entry{ID: "a1", Kind: "token.created", OrgID: "org", ProjectID: "p1", Actor: "tok-org", Detail: map[string]string{"token": "tok-p1"}, At: t0}))
	must(s.CreateLogin(ctx, login.Login{IDHash: "lh", ApprovalID: "ap1", Status: login.StatusPending, Source: "192.0.2.1", CreatedAt: t0, ExpiresAt: t0.Add(10 * time.Minute)}))
	must(s.CreateContext(ctx, store.Context{Key: "ctx1", OrgID: "org", ProjectID: "c1", BlobKey: "blobs/ctx1", Size: 1000, Charged: 1000, CreatedAt: t0, ExpiresAt: t0.Add(24 * time.Hour)}))
	must(s.SettleContext(ctx, "ctx1", 900))
}

// readAll reads back through the store's API what populate wrote.
func readAll(t *testing.T, s store.Store) map[string]any {
	t.Helper()
	ctx := context.Background()
	out := map[string]any{}
	get := func(name string, v any, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		out[name] = v
	}
	orgs, err := s.ListOrganizations(ctx)
	get("orgs", orgs, err)
	projects, err := s.ListProjects(ctx, "org")
	get("projects", projects, err)
	tokens, err := s.ListTokens(ctx, "org", "p1")
	get("tokens p1", tokens, err)
	tok, err := s.GetTokenByHash(ctx, "h-org")
	get("token org", tok, err)
	tps, err := s.ListTrustPolicies(ctx, "p1")
	get("trust policies", tps, err)
	matched, err := s.MatchTrustPolicies(ctx, auth.ProviderGitHub, "ACME")
	get("matched policies", matched, err)
	builds, err := s.ListBuilds(ctx, "p1", time.Time{}, 10)
	get("builds p1", builds, err)
	b2, err := s.GetBuild(ctx, "b2")
	get("build b2", b2, err)
	steps, err := s.ListSteps(ctx, "b1")
	get("steps", steps, err)
	logs, err := s.ListBuildLogs(ctx, "b1", 0, 100)
	get("logs", logs, err)
	share, err := s.GetBuildShareByToken(ctx, "share-token")
	get("share", share, err)
	samples, err := s.ListResourceSamples(ctx, "b1")
	get("samples", samples, err)
	events, err := s.ListResourceEvents(ctx, "b1")
	get("events", events, err)
	manifests, err := s.ListRegistryManifests(ctx, "p1/app")
	get("manifests", manifests, err)
	referrers, err := s.ListRegistryReferrers(ctx, "p1/app", "sha256:m1", "")
	get("referrers", referrers, err)
	tags, err := s.ListRegistryTags(ctx, store.RegistryTagQuery{ProjectID: "p1"})
	get("tags", tags, err)
	settings, err := s.GetRegistrySettings(ctx, "p1")
	get("registry settings", settings, err)
	entries, err := s.ListAuditEvents(ctx, audit.EntryQuery{OrgIDs: []string{"org"}, Limit: 10})
	get("audit", entries, err)
	lg, err := s.GetLoginByApproval(ctx, "ap1")
	get("login", lg, err)
	c, err := s.GetContext(ctx, "ctx1")
	get("context", c, err)
	usage, err := s.BuildUsage(ctx, "org", t0.Add(-time.Hour), t0.Add(time.Hour))
	get("usage", usage, err)
	return out
}

// A populated SQLite install copied to Postgres reads back the same through
// the store's API, and new writes work there (the policy a job's token
// was minted under still revokes it).
func TestCopySQLiteToPostgres(t *testing.T) {
	ctx := context.Background()
	lite, err := store.OpenSQLite(ctx, filepath.Join(t.TempDir(), "kiln.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer lite.Close()
	populate(t, lite)
	url := pgtest.NewDatabase(t)
	pg := openPostgres(t, url)
	// A table of something else in the target's schema (an extension's):
	// left alone.
	admin, err := sql.Open("pgx", url)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	if _, err := admin.ExecContext(ctx, `CREATE TABLE spatial_ref_sys (srid integer)`); err != nil {
		t.Fatal(err)
	}

	copied := map[string]int64{}
	if err := store.Copy(ctx, pg, lite, func(table string, n int64) { copied[table] = n }); err != nil {
		t.Fatal(err)
	}
	if copied["builds"] != 2 || copied["build_logs"] != 2 || copied["registry_manifests"] != 2 || copied["organizations"] != 1 {
		t.Errorf("copied %v", copied)
	}
	want, got := readAll(t, lite), readAll(t, pg)
	// What is compared is there (equal empty answers would prove nothing).
	for k, n := range map[string]int{"orgs": 1, "projects": 3, "tokens p1": 2, "trust policies": 1, "matched policies": 1, "builds p1": 1,
		"steps": 2, "logs": 2, "samples": 1, "events": 1, "manifests": 2, "referrers": 1, "tags": 1, "audit": 1, "usage": 2} {
		if l := reflect.ValueOf(want[k]).Len(); l != n {
			t.Errorf("%s: the source reads %d, want %d", k, l, n)
		}
	}
	for k := range want {
		if !reflect.DeepEqual(want[k], got[k]) {
			t.Errorf("%s:\nsqlite   %+v\npostgres %+v", k, want[k], got[k])
		}
	}
	if err := pg.RevokeTrustPolicy(ctx, "tp1"); err != nil {
		t.Fatal(err)
	}
	if _, err := pg.GetToken(ctx, "tok-job"); !errdefs.IsNotFound(err) {
		t.Errorf("job token after its policy was revoked: %v", err)
	}

	// A second copy into a non-empty target is refused, and changes nothing.
	err = store.Copy(ctx, pg, lite, nil)
	if !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Errorf("copy into a non-empty target: %v, want ErrAlreadyExists", err)
	}
	if bs, _ := pg.ListBuilds(ctx, "p1", time.Time{}, 10); len(bs) != 1 {
		t.Errorf("after the refused copy: %d builds of p1, want 1", len(bs))
	}
}
