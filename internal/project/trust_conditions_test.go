package project_test

import (
	"context"
	"testing"

	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/project"
)

// A policy's ids, conditions and role are checked on the way in, and a
// policy that differs from another only in them is a policy of its own.
func TestTrustPolicyConditions(t *testing.T) {
	ctx := context.Background()
	st := orgStore(t, "a")
	svc := &project.Service{Store: st}
	org := auth.Principal{Kind: auth.TokenOrg, OrgID: "o"}
	gh := func(edit func(*auth.TrustPolicy)) auth.TrustPolicy {
		tp := auth.TrustPolicy{Provider: auth.ProviderGitHub, Owner: "acme", Repo: "app"}
		edit(&tp)
		return tp
	}

	plain, err := svc.AddTrustPolicy(ctx, org, "a", gh(func(*auth.TrustPolicy) {}))
	if err != nil {
		t.Fatal(err)
	}
	mainPush := gh(func(tp *auth.TrustPolicy) {
		tp.RepoID, tp.OwnerID, tp.Ref, tp.RefType, tp.Event, tp.Environment = "101", "202", "refs/heads/main", "branch", "push", "prod"
		tp.Workflow, tp.Role = "acme/app/.github/workflows/*@*", auth.RoleProject
	})
	got, err := svc.AddTrustPolicy(ctx, org, "a", mainPush)
	if err != nil || got.ID == plain.ID || got.RepoID != "101" || got.Ref != "refs/heads/main" || got.Role != auth.RoleProject {
		t.Fatalf("policy with conditions = %+v, %v", got, err)
	}
	if again, err := svc.AddTrustPolicy(ctx, org, "a", mainPush); err != nil || again.ID != got.ID {
		t.Errorf("the same conditions again = %+v, %v; want %s", again, err, got.ID)
	}
	// "build" is the default role, stored as "".
	if again, err := svc.AddTrustPolicy(ctx, org, "a", gh(func(tp *auth.TrustPolicy) { tp.Role = auth.RoleBuild })); err != nil || again.ID != plain.ID {
		t.Errorf("role build = %+v, %v; want the plain policy %s", again, err, plain.ID)
	}

	for name, tp := range map[string]auth.TrustPolicy{
		"non-numeric id":        gh(func(tp *auth.TrustPolicy) { tp.RepoID = "12a" }),
		"ref type":              gh(func(tp *auth.TrustPolicy) { tp.RefType = "branches" }),
		"event":                 gh(func(tp *auth.TrustPolicy) { tp.Event = "Push Event" }),
		"ref with a space":      gh(func(tp *auth.TrustPolicy) { tp.Ref = "refs/heads/ma in" }),
		"non-ASCII environment": gh(func(tp *auth.TrustPolicy) { tp.Environment = "pr\u00f6d" }),
		"role":                  gh(func(tp *auth.TrustPolicy) { tp.Role = "admin" }),
		"workflow on GitLab":    {Provider: auth.ProviderGitLab, Owner: "acme", Repo: "acme/app", Workflow: "*"},
		"ref on Buildkite":      {Provider: auth.ProviderBuildkite, Owner: "acme", Repo: "deploy", Ref: "main"},
		"repository id on CircleCI": {Provider: auth.ProviderCircleCI, Owner: "6b1f3a4e-5c7d-4e8f-9a0b-1c2d3e4f5a6b",
			Repo: "0c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f", RepoID: "1"},
	} {
		if _, err := svc.AddTrustPolicy(ctx, org, "a", tp); !errdefs.IsInvalid(err) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
	// A role is fine on any provider.
	if _, err := svc.AddTrustPolicy(ctx, org, "a", auth.TrustPolicy{Provider: auth.ProviderBuildkite, Owner: "acme", Repo: "deploy", Role: auth.RoleProject}); err != nil {
		t.Errorf("buildkite with role project: %v", err)
	}
}
