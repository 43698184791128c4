package project_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/project"
)

func TestNormalizeTrustPolicy(t *testing.T) {
	const org, proj = "6B1F3A4E-1111-4C2D-9E8F-000000000001", "0c2d3e4f-2222-4a5b-8c9d-000000000002"
	ok := []struct{ provider, owner, repo, wantOwner, wantRepo string }{
		{"github", "acme", "app", "acme", "app"},
		{"github", " acme ", "acme/app", "acme", "acme/app"},
		{"github", "Acme", "acme/App.js", "Acme", "acme/App.js"},
		{"github", "my-org", "my_repo.v2", "my-org", "my_repo.v2"},
		{"circleci", org, proj, strings.ToLower(org), proj},
		{"buildkite", "acme", "deploy-prod", "acme", "deploy-prod"},
		{"gitlab", "group", "app", "group", "group/app"},
		{"gitlab", "group/sub", "group/sub/app", "group/sub", "group/sub/app"},
		{"gitlab", "group/sub", "app", "group/sub", "group/sub/app"},
	}
	for _, tc := range ok {
		o, r, err := project.NormalizeTrustPolicy(tc.provider, tc.owner, tc.repo)
		if err != nil || o != tc.wantOwner || r != tc.wantRepo {
			t.Errorf("%s %q %q = %q %q, %v; want %q %q", tc.provider, tc.owner, tc.repo, o, r, err, tc.wantOwner, tc.wantRepo)
		}
	}
	bad := []struct{ provider, owner, repo string }{
		{"", "acme", "app"},
		{"jenkins", "acme", "app"},
		{"GitHub", "acme", "app"},
		{"github", "", "app"},
		{"github", "acme", ""},
		{"github", "acme", "other/app"},
		{"github", "acme", "acme/"},
		{"github", "acme", "acme/app/x"},
		{"github", "acme", ".."},
		{"github", "acme", "acme/.."},
		{"github", "-acme", "app"},
		{"github", "ac me", "app"},
		{"github", "acme", "ap\np"},
		{"github", "acme", "app\x00"},
		{"github", "acme", "ápp"},
		{"github", "acme", "*"},
		{"github", "acme", "app%"},
		{"github", strings.Repeat("a", 101), "app"},
		{"github", "acme", strings.Repeat("a", 101)},
		{"circleci", "acme", proj},
		{"circleci", org, "project"},
		{"circleci", org + "0", proj},
		{"buildkite", "acme", "deploy/prod"},
		{"buildkite", "", "deploy"},
		{"gitlab", "", "app"},
		{"gitlab", "group", "other/app"},
		{"gitlab", "group", "group/sub/app"},
		{"gitlab", "group//sub", "app"},
		{"gitlab", "group/", "app"},
		{"gitlab", "group", "app.git"},
		{"gitlab", "group", "../app"},
		{"gitlab", strings.Repeat("g/", 21) + "g", "app"},
	}
	for _, tc := range bad {
		if _, _, err := project.NormalizeTrustPolicy(tc.provider, tc.owner, tc.repo); !errdefs.IsInvalid(err) {
			t.Errorf("%s %q %q: %v, want ErrInvalid", tc.provider, tc.owner, tc.repo, err)
		}
	}
}

func TestTrustPolicyService(t *testing.T) {
	ctx := context.Background()
	st := orgStore(t, "a", "b")
	now := time.Now()
	st.CreateOrganization(ctx, project.Organization{ID: "o2", Name: "o2", CreatedAt: now})
	st.CreateProject(ctx, project.Project{ID: "x", OrgID: "o2", Name: "x", CreatedAt: now})
	svc := &project.Service{Store: st}
	org := auth.Principal{Kind: auth.TokenOrg, OrgID: "o"}
	gh := auth.TrustPolicy{Provider: auth.ProviderGitHub, Owner: "acme", Repo: "app"}

	tp, err := svc.AddTrustPolicy(ctx, org, "a", gh)
	if err != nil || tp.ID == "" || tp.ProjectID != "a" || tp.OrgID != "o" || tp.CreatedAt.IsZero() {
		t.Fatalf("AddTrustPolicy = %+v, %v", tp, err)
	}
	// Adding it again (in another case) returns the same policy.
	again, err := svc.AddTrustPolicy(ctx, org, "a", auth.TrustPolicy{Provider: auth.ProviderGitHub, Owner: "ACME", Repo: "App"})
	if err != nil || again.ID != tp.ID {
		t.Errorf("second add = %+v, %v; want %s", again, err, tp.ID)
	}
	if l, err := svc.ListTrustPolicies(ctx, org, "a"); err != nil || len(l) != 1 {
		t.Errorf("ListTrustPolicies(a) = %+v, %v", l, err)
	}

	// Nobody but an organization token of the project's org administers them.
	denied := []auth.Principal{
		{Kind: auth.TokenProject, OrgID: "o", ProjectID: "a"},
		{Kind: auth.TokenOIDC, OrgID: "o", ProjectIDs: []string{"a"}},
		{Kind: auth.TokenBuild, OrgID: "o", ProjectID: "a", BuildID: "b1"},
		{Kind: auth.TokenOrg, OrgID: "o2"},
	}
	for _, p := range denied {
		_, err1 := svc.ListTrustPolicies(ctx, p, "a")
		_, err2 := svc.AddTrustPolicy(ctx, p, "a", gh)
		err3 := svc.RemoveTrustPolicy(ctx, p, "a", tp.ID)
		for i, err := range []error{err1, err2, err3} {
			if !errors.Is(err, errdefs.ErrPermission) && !errdefs.IsNotFound(err) {
				t.Errorf("%s principal, call %d: %v; want PermissionDenied or NotFound", p.Kind, i, err)
			}
		}
	}
	// Another project's policy cannot be removed through this one.
	if err := svc.RemoveTrustPolicy(ctx, org, "b", tp.ID); !errdefs.IsNotFound(err) {
		t.Errorf("remove through project b: %v", err)
	}
	if _, err := svc.AddTrustPolicy(ctx, org, "a", auth.TrustPolicy{Provider: "github", Owner: "acme", Repo: "other/app"}); !errdefs.IsInvalid(err) {
		t.Errorf("invalid policy: %v", err)
	}
	if _, err := svc.AddTrustPolicy(ctx, org, "missing", gh); !errdefs.IsNotFound(err) {
		t.Errorf("missing project: %v", err)
	}

	// A project holds at most MaxTrustPolicies.
	for i := 1; i < project.MaxTrustPolicies; i++ {
		if _, err := svc.AddTrustPolicy(ctx, org, "a", auth.TrustPolicy{Provider: "buildkite", Owner: "acme", Repo: fmt.Sprint("p", i)}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := svc.AddTrustPolicy(ctx, org, "a", auth.TrustPolicy{Provider: "buildkite", Owner: "acme", Repo: "one-more"}); !errors.Is(err, errdefs.ErrExhausted) {
		t.Errorf("policy %d: %v, want ErrExhausted", project.MaxTrustPolicies+1, err)
	}

	if err := svc.RemoveTrustPolicy(ctx, org, "a", tp.ID); err != nil {
		t.Fatal(err)
	}
	if err := svc.RemoveTrustPolicy(ctx, org, "a", tp.ID); !errdefs.IsNotFound(err) {
		t.Errorf("second remove: %v", err)
	}
}
