// Package storetest is the conformance suite every store.Store
// implementation runs (SQLite and Postgres): the same cases, the
// same expectations, including isolation between projects.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/build"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/project"
	"github.com/kiln-dev/kiln/internal/store"
)

// Run runs the suite; newStore returns an empty store for each subtest.
func Run(t *testing.T, newStore func(t *testing.T) store.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s store.Store)
	}{
		{"ProjectsCRUD", projectsCRUD},
		{"TokensByHashAndScope", tokens},
		{"BuildStateMachine", builds},
		{"ConcurrentBuildUpdates", concurrentUpdates},
		{"ConcurrentStepsAndLogs", concurrentStepsAndLogs},
		{"AnyBytesFromBuilders", anyBytes},
		{"StepsAndLogs", stepsAndLogs},
		{"DeleteProjectCascades", deleteCascades},
		{"TrustPolicies", trustPolicies},
		{"Logins", logins},
		{"UsageAndShares", usageAndShares}, {"AuditLog", auditLog},
		{"RegistryIndex", registryIndex},
		{"CustomerProjects", customerProjects},
		{"SourceBuilds", sourceBuilds},
		{"BuildLogs", buildLogs},
		{"Contexts", contexts},
		{"ContextQuota", contextQuota},
		{"EgressAllow", egressAllow},
		{"JobCredentials", jobCredentials},
		{"ResourceSamples", resourceSamples},
		{"Replicas", replicas},
		{"BuilderPlacement", builderPlacement},
		{"SharedSecretsAndLocks", secretsAndLocks},
		{"WebSessions", webSessions},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, newStore(t)) })
	}
}

var now = time.UnixMilli(1_700_000_000_000).UTC()

func seed(t *testing.T, s store.Store, org string, projects ...string) {
	t.Helper()
	ctx := context.Background()
	if _, err := s.GetOrganization(ctx, org); errdefs.IsNotFound(err) {
		if err := s.CreateOrganization(ctx, project.Organization{ID: org, Name: org, CreatedAt: now}); err != nil {
			t.Fatal(err)
		}
	}
	for i, p := range projects {
		if err := s.CreateProject(ctx, project.Project{ID: p, OrgID: org, Name: p, CreatedAt: now.Add(time.Duration(i) * time.Second)}); err != nil {
			t.Fatal(err)
		}
	}
}

func projectsCRUD(t *testing.T, s store.Store) {
	ctx := context.Background()
	seed(t, s, "o1", "p1", "p2")
	seed(t, s, "o2", "q1")
	if err := s.CreateProject(ctx, project.Project{ID: "p1", OrgID: "o1", Name: "dup", CreatedAt: now}); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Errorf("duplicate project: %v, want ErrAlreadyExists", err)
	}
	got, err := s.ListProjects(ctx, "o1")
	if err != nil || len(got) != 2 || got[0].ID != "p1" || got[1].ID != "p2" {
		t.Fatalf("ListProjects(o1) = %+v, %v", got, err)
	}
	p, _ := s.GetProject(ctx, "p1")
	p.Name, p.KeepGB, p.KeepDays = "renamed", 20, 7
	if err := s.UpdateProject(ctx, p); err != nil {
		t.Fatal(err)
	}
	if p2, _ := s.GetProject(ctx, "p1"); p2.Name != "renamed" || p2.KeepGB != 20 || p2.KeepDays != 7 || !p2.CreatedAt.Equal(now) {
		t.Errorf("after update: %+v", p2)
	}
	if _, err := s.GetProject(ctx, "nope"); !errdefs.IsNotFound(err) {
		t.Errorf("GetProject(nope): %v", err)
	}
	if err := s.UpdateProject(ctx, project.Project{ID: "nope"}); !errdefs.IsNotFound(err) {
		t.Errorf("UpdateProject(nope): %v", err)
	}
}

func tokens(t *testing.T, s store.Store) {
	ctx := context.Background()
	seed(t, s, "o1", "p1", "p2")
	for _, tok := range []auth.Token{
		{ID: "t1", Kind: auth.TokenProject, OrgID: "o1", ProjectID: "p1", SecretHash: "h1", CreatedAt: now},
		{ID: "t2", Kind: auth.TokenProject, OrgID: "o1", ProjectID: "p2", SecretHash: "h2", CreatedAt: now},
		{ID: "t3", Kind: auth.TokenBuild, OrgID: "o1", ProjectID: "p1", BuildID: "b1", SecretHash: "h3", CreatedAt: now, ExpiresAt: now.Add(time.Hour)},
	} {
		if err := s.CreateToken(ctx, tok); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.CreateToken(ctx, auth.Token{ID: "t4", Kind: auth.TokenOrg, OrgID: "o1", SecretHash: "h1", CreatedAt: now}); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Errorf("duplicate secret hash: %v", err)
	}
	got, err := s.GetTokenByHash(ctx, "h3")
	if err != nil || got.BuildID != "b1" || !got.ExpiresAt.Equal(now.Add(time.Hour)) {
		t.Errorf("GetTokenByHash(h3) = %+v, %v", got, err)
	}
	list, _ := s.ListTokens(ctx, "o1", "p1")
	if len(list) != 1 || list[0].ID != "t1" {
		t.Errorf("ListTokens(p1) = %+v (build tokens must not be listed, nor p2's)", list)
	}
	if err := s.DeleteToken(ctx, "t1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetTokenByHash(ctx, "h1"); !errdefs.IsNotFound(err) {
		t.Errorf("deleted token still found: %v", err)
	}
	if err := s.DeleteToken(ctx, "t1"); !errdefs.IsNotFound(err) {
		t.Errorf("second delete: %v", err)
	}
}

func builds(t *testing.T, s store.Store) {
	ctx := context.Background()
	seed(t, s, "o1", "p1", "p2")
	for i := 0; i < 5; i++ {
		b := build.Build{ID: fmt.Sprintf("b%d", i), ProjectID: "p1", OrgID: "o1", Status: build.Running, CreatedAt: now.Add(time.Duration(i) * time.Minute)}
		if err := s.CreateBuild(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	s.CreateBuild(ctx, build.Build{ID: "other", ProjectID: "p2", OrgID: "o1", Status: build.Running, CreatedAt: now})
	page, _ := s.ListBuilds(ctx, "p1", time.Time{}, 2)
	if len(page) != 2 || page[0].ID != "b4" || page[1].ID != "b3" {
		t.Fatalf("first page = %+v", page)
	}
	page, _ = s.ListBuilds(ctx, "p1", page[1].CreatedAt, 10)
	if len(page) != 3 || page[0].ID != "b2" {
		t.Fatalf("second page = %+v", page)
	}
	b, err := s.UpdateBuild(ctx, "b1", func(b *build.Build) error {
		b.Status, b.Error, b.FinishedAt = build.Failed, "boom", now
		return nil
	})
	if err != nil || b.Status != build.Failed {
		t.Fatal(b, err)
	}
	// A failing fn writes nothing.
	_, err = s.UpdateBuild(ctx, "b2", func(b *build.Build) error {
		b.Status = build.Succeeded
		return errdefs.ErrFailedPrecondition
	})
	if !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("UpdateBuild error not passed through: %v", err)
	}
	if b2, _ := s.GetBuild(ctx, "b2"); b2.Status != build.Running {
		t.Errorf("aborted update was written: %+v", b2)
	}
	running, _ := s.ListBuildsByStatus(ctx, build.Running)
	if len(running) != 5 { // b0, b2, b3, b4, other
		t.Errorf("running = %d builds, want 5", len(running))
	}
	if _, err := s.UpdateBuild(ctx, "nope", func(*build.Build) error { return nil }); !errdefs.IsNotFound(err) {
		t.Errorf("UpdateBuild(nope): %v", err)
	}
}

func concurrentUpdates(t *testing.T, s store.Store) {
	ctx := context.Background()
	seed(t, s, "o1", "p1")
	s.CreateBuild(ctx, build.Build{ID: "b", ProjectID: "p1", OrgID: "o1", Status: build.Running, CreatedAt: now})
	// Many finishers race; exactly one moves the build out of running.
	var wg sync.WaitGroup
	var mu sync.Mutex
	winners := 0
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			s.UpdateBuild(ctx, "b", func(b *build.Build) error {
				if b.Terminal() {
					return nil
				}
				mu.Lock()
				winners++
				mu.Unlock()
				b.Status, b.Error = build.Failed, fmt.Sprint(i)
				return nil
			})
		}(i)
	}
	wg.Wait()
	if winners != 1 {
		t.Errorf("%d updates saw the build running; want exactly 1", winners)
	}
}

func stepsAndLogs(t *testing.T, s store.Store) {
	ctx := context.Background()
	seed(t, s, "o1", "p1")
	s.CreateBuild(ctx, build.Build{ID: "b", ProjectID: "p1", OrgID: "o1", Status: build.Running, CreatedAt: now})
	s.PutSteps(ctx, "b", []build.Step{{Digest: "d1", Name: "one"}, {Digest: "d2", Name: "two"}})
	s.PutSteps(ctx, "b", []build.Step{{Digest: "d1", Name: "one", Cached: true, CompletedAt: now}, {Digest: "d3", Name: "three"}})
	steps, _ := s.ListSteps(ctx, "b")
	if len(steps) != 3 || steps[0].Digest != "d1" || !steps[0].Cached || steps[2].Digest != "d3" {
		t.Errorf("steps = %+v", steps)
	}
	// Two sources of one step (the builder, the client), in any order,
	// merge (build.MergeStep): a partial later report clobbers nothing.
	t1, t2 := now.Add(time.Second), now.Add(2*time.Second)
	s.PutSteps(ctx, "b", []build.Step{{Digest: "d2", Name: "two", StartedAt: t1, CompletedAt: t2, Error: "exit code: 1"}})
	s.PutSteps(ctx, "b", []build.Step{{Digest: "d2", StartedAt: now, CompletedAt: t1}})
	s.PutSteps(ctx, "b", []build.Step{{Digest: "d2", Name: "", Cached: false}})
	steps, _ = s.ListSteps(ctx, "b")
	if len(steps) != 3 || steps[1].Digest != "d2" {
		t.Fatalf("steps = %+v", steps)
	}
	if d2 := steps[1]; d2.Name != "two" || d2.Cached || !d2.StartedAt.Equal(now) || !d2.CompletedAt.Equal(t2) || d2.Error != "exit code: 1" {
		t.Errorf("merged step = %+v", d2)
	}
	var lines []build.LogLine
	for i := 0; i < 5; i++ {
		lines = append(lines, build.LogLine{Digest: "d1", At: now, Message: fmt.Sprint(i)})
	}
	s.AppendLogs(ctx, "b", lines)
	page, next, _ := s.ListLogs(ctx, "b", "d1", 0, 3)
	rest, _, _ := s.ListLogs(ctx, "b", "d1", next, 3)
	if len(page) != 3 || len(rest) != 2 || rest[1].Message != "4" {
		t.Errorf("log pages = %+v / %+v", page, rest)
	}
}

func deleteCascades(t *testing.T, s store.Store) {
	ctx := context.Background()
	seed(t, s, "o1", "p1", "p2")
	s.CreateBuild(ctx, build.Build{ID: "b1", ProjectID: "p1", OrgID: "o1", Status: build.Running, CreatedAt: now})
	s.CreateBuild(ctx, build.Build{ID: "b2", ProjectID: "p2", OrgID: "o1", Status: build.Running, CreatedAt: now})
	s.CreateToken(ctx, auth.Token{ID: "t1", Kind: auth.TokenProject, OrgID: "o1", ProjectID: "p1", SecretHash: "h1", CreatedAt: now})
	s.PutSteps(ctx, "b1", []build.Step{{Digest: "d", Name: "n"}})
	if err := s.DeleteProject(ctx, "p1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetBuild(ctx, "b1"); !errdefs.IsNotFound(err) {
		t.Errorf("build of deleted project: %v", err)
	}
	if _, err := s.GetTokenByHash(ctx, "h1"); !errdefs.IsNotFound(err) {
		t.Errorf("token of deleted project: %v", err)
	}
	if _, err := s.GetBuild(ctx, "b2"); err != nil {
		t.Errorf("other project's build gone: %v", err)
	}
	if err := s.DeleteProject(ctx, "p1"); !errdefs.IsNotFound(err) {
		t.Errorf("second delete: %v", err)
	}
	// What a builder still reports for a build whose project is gone is
	// dropped, not left without its build.
	if err := s.AppendLogs(ctx, "b1", []build.LogLine{{Digest: "d", Message: "late\n"}}); err != nil {
		t.Errorf("late log of a deleted build: %v", err)
	}
	if err := s.PutSteps(ctx, "b1", []build.Step{{Digest: "d2", Name: "late"}}); err != nil {
		t.Errorf("late step of a deleted build: %v", err)
	}
	if logs, _ := s.ListBuildLogs(ctx, "b1", 0, 10); len(logs) != 0 {
		t.Errorf("a deleted build has %d log lines", len(logs))
	}
	if steps, _ := s.ListSteps(ctx, "b1"); len(steps) != 0 {
		t.Errorf("a deleted build has %d steps", len(steps))
	}
}
