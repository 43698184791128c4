package storetest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/store"
)

func trustPolicies(t *testing.T, s store.Store) {
	ctx := context.Background()
	seed(t, s, "o1", "p1", "p2")
	seed(t, s, "o2", "q1")
	add := func(id, project, org, provider, owner, repo string, at time.Duration) {
		t.Helper()
		if err := s.CreateTrustPolicy(ctx, auth.TrustPolicy{ID: id, ProjectID: project, OrgID: org, Provider: provider,
			Owner: owner, Repo: repo, CreatedAt: now.Add(at)}); err != nil {
			t.Fatalf("CreateTrustPolicy(%s): %v", id, err)
		}
	}
	add("tp1", "p1", "o1", auth.ProviderGitHub, "Acme", "app", 0)
	add("tp2", "p2", "o1", auth.ProviderGitHub, "acme", "acme/lib", time.Second)
	add("tp3", "p1", "o1", auth.ProviderGitLab, "acme", "acme/app", 2*time.Second)
	add("tp4", "q1", "o2", auth.ProviderGitHub, "ACME", "app", 3*time.Second)
	add("tp5", "q1", "o2", auth.ProviderBuildkite, "acme", "deploy", 4*time.Second)

	dup := auth.TrustPolicy{ID: "tp6", ProjectID: "p1", OrgID: "o1", Provider: auth.ProviderGitHub, Owner: "Acme", Repo: "app", CreatedAt: now}
	if err := s.CreateTrustPolicy(ctx, dup); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Errorf("duplicate policy: %v, want ErrAlreadyExists", err)
	}
	dup.ID = "tp1"
	dup.Repo = "other"
	if err := s.CreateTrustPolicy(ctx, dup); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Errorf("duplicate id: %v, want ErrAlreadyExists", err)
	}

	// The same repository with conditions is another policy, and its
	// conditions and role read back as written.
	cond := auth.TrustPolicy{ID: "tp7", ProjectID: "p1", OrgID: "o1", Provider: auth.ProviderGitHub, Owner: "Acme", Repo: "app",
		CreatedAt: now.Add(5 * time.Second), RepoID: "101", OwnerID: "202", Ref: "refs/heads/main", RefType: "branch",
		Event: "push", Environment: "prod", Workflow: "Acme/app/.github/workflows/ci.yml@*", Role: auth.RoleProject}
	if err := s.CreateTrustPolicy(ctx, cond); err != nil {
		t.Fatalf("CreateTrustPolicy with conditions: %v", err)
	}
	if got, err := s.GetTrustPolicy(ctx, "tp7"); err != nil || got != cond {
		t.Errorf("GetTrustPolicy(tp7) = %+v, %v; want %+v", got, err, cond)
	}
	cond.ID = "tp8"
	if err := s.CreateTrustPolicy(ctx, cond); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Errorf("duplicate policy with conditions: %v, want ErrAlreadyExists", err)
	}
	if err := s.DeleteTrustPolicy(ctx, "tp7"); err != nil {
		t.Fatal(err)
	}

	got, err := s.GetTrustPolicy(ctx, "tp1")
	if err != nil || got.ProjectID != "p1" || got.OrgID != "o1" || got.Provider != auth.ProviderGitHub ||
		got.Owner != "Acme" || got.Repo != "app" || !got.CreatedAt.Equal(now) {
		t.Errorf("GetTrustPolicy(tp1) = %+v, %v", got, err)
	}
	if _, err := s.GetTrustPolicy(ctx, "nope"); !errdefs.IsNotFound(err) {
		t.Errorf("GetTrustPolicy(nope): %v", err)
	}

	ids := func(tps []auth.TrustPolicy) []string {
		var out []string
		for _, tp := range tps {
			out = append(out, tp.ID)
		}
		return out
	}
	// A project's list holds its own policies only, oldest first.
	if l, err := s.ListTrustPolicies(ctx, "p1"); err != nil || !sameTrustIDs(ids(l), "tp1", "tp3") {
		t.Errorf("ListTrustPolicies(p1) = %v, %v", ids(l), err)
	}
	if l, err := s.ListTrustPolicies(ctx, "nope"); err != nil || len(l) != 0 {
		t.Errorf("ListTrustPolicies(nope) = %v, %v", ids(l), err)
	}
	// Matching spans projects and organizations, by provider and owner
	// ignoring case.
	if l, err := s.MatchTrustPolicies(ctx, auth.ProviderGitHub, "aCmE"); err != nil || !sameTrustIDs(ids(l), "tp1", "tp2", "tp4") {
		t.Errorf("MatchTrustPolicies(github, aCmE) = %v, %v", ids(l), err)
	}
	if l, err := s.MatchTrustPolicies(ctx, auth.ProviderGitLab, "acme"); err != nil || !sameTrustIDs(ids(l), "tp3") {
		t.Errorf("MatchTrustPolicies(gitlab, acme) = %v, %v", ids(l), err)
	}
	for _, owner := range []string{"acm", "acme%", "%", "", "acme/app"} {
		if l, err := s.MatchTrustPolicies(ctx, auth.ProviderGitHub, owner); err != nil || len(l) != 0 {
			t.Errorf("MatchTrustPolicies(github, %q) = %v, %v; want none", owner, ids(l), err)
		}
	}
	if l, err := s.MatchTrustPolicies(ctx, auth.ProviderCircleCI, "acme"); err != nil || len(l) != 0 {
		t.Errorf("MatchTrustPolicies(circleci, acme) = %v, %v; want none", ids(l), err)
	}

	if err := s.DeleteTrustPolicy(ctx, "tp1"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteTrustPolicy(ctx, "tp1"); !errdefs.IsNotFound(err) {
		t.Errorf("second delete: %v", err)
	}
	if l, _ := s.MatchTrustPolicies(ctx, auth.ProviderGitHub, "acme"); !sameTrustIDs(ids(l), "tp2", "tp4") {
		t.Errorf("after delete: %v", ids(l))
	}

	// Deleting a project takes its policies along, and only its own.
	if err := s.DeleteProject(ctx, "p1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetTrustPolicy(ctx, "tp3"); !errdefs.IsNotFound(err) {
		t.Errorf("policy of a deleted project: %v", err)
	}
	if l, _ := s.MatchTrustPolicies(ctx, auth.ProviderGitHub, "acme"); !sameTrustIDs(ids(l), "tp2", "tp4") {
		t.Errorf("other projects' policies after delete: %v", ids(l))
	}
}

func sameTrustIDs(got []string, want ...string) bool {
	if len(got) != len(want) {
		return false
	}
	for i := range got {
		if got[i] != want[i] {
			return false
		}
	}
	return true
}
