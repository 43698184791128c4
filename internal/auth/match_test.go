package auth_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/auth/oidc/oidctest"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/project"
)

// A policy's conditions each narrow it: the job that meets all of them is
// admitted, a job differing in any single one is refused, and names match
// ignoring ASCII case only.
func TestPolicyConditions(t *testing.T) {
	ctx := context.Background()
	st, iss, a := oidcAuth(t, "p1", "p2", "p3")
	now := time.Now()
	pinned := auth.TrustPolicy{ID: "tp1", ProjectID: "p1", OrgID: "o", Provider: auth.ProviderGitHub, Owner: "acme", Repo: "kit",
		CreatedAt: now, RepoID: "101", OwnerID: "202", Ref: "refs/heads/release/*", RefType: "branch", Event: "push",
		Environment: "prod", Workflow: "acme/kit/.github/workflows/*.yml@refs/heads/*"}
	if err := st.CreateTrustPolicy(ctx, pinned); err != nil {
		t.Fatal(err)
	}
	job := func(edit func(map[string]any)) string {
		c := oidctest.GitHubClaims(iss.URL, "kiln", "acme/kit")
		c["repository_id"], c["repository_owner_id"] = "101", "202"
		c["ref"], c["ref_type"], c["event_name"], c["environment"] = "refs/heads/release/1.2", "branch", "push", "prod"
		c["job_workflow_ref"] = "acme/kit/.github/workflows/ci.yml@refs/heads/release/1.2"
		if edit != nil {
			edit(c)
		}
		return oidctest.Sign(t, iss.Key(), c)
	}
	p, err := a.Authenticate(ctx, job(nil))
	if err != nil || !slices.Equal(p.ProjectIDs, []string{"p1"}) || len(p.WideProjectIDs) != 0 {
		t.Fatalf("the matching job: %+v, %v", p, err)
	}
	if proj := (project.Project{ID: "p1", OrgID: "o"}); !p.CanBuild(proj) || p.CanManage(proj) {
		t.Errorf("default role: build %v, manage %v; want build only", p.CanBuild(proj), p.CanManage(proj))
	}

	refused := map[string]func(map[string]any){
		"repository recreated (another id)": func(c map[string]any) { c["repository_id"] = "999" },
		"owner recreated (another id)":      func(c map[string]any) { c["repository_owner_id"] = "999" },
		"no repository_id claim":            func(c map[string]any) { delete(c, "repository_id") },
		"an attacker's branch":              func(c map[string]any) { c["ref"] = "refs/heads/evil" },
		"a branch named like the glob":      func(c map[string]any) { c["ref"] = "refs/heads/releasex/1" },
		"a tag":                             func(c map[string]any) { c["ref_type"] = "tag" },
		"pull_request_target":               func(c map[string]any) { c["event_name"] = "pull_request_target" },
		"another environment":               func(c map[string]any) { c["environment"] = "staging" },
		"no environment":                    func(c map[string]any) { delete(c, "environment") },
		"another workflow":                  func(c map[string]any) { c["job_workflow_ref"] = "evil/x/.github/workflows/ci.yml@refs/heads/main" },
		"Kelvin sign in the repository":     func(c map[string]any) { c["repository"] = "acme/\u212Ait" },
		"Kelvin sign in the owner": func(c map[string]any) {
			c["repository_owner"], c["repository"] = "acme\u212A", "acme\u212A/kit"
		},
	}
	for name, edit := range refused {
		if _, err := a.Authenticate(ctx, job(edit)); !errors.Is(err, errdefs.ErrPermission) {
			t.Errorf("%s: %v, want ErrPermission", name, err)
		}
	}
	// ASCII case still folds.
	if _, err := a.Authenticate(ctx, job(func(c map[string]any) { c["repository"] = "ACME/KIT" })); err != nil {
		t.Errorf("ACME/KIT: %v", err)
	}

	// A policy with role "project" widens the job's rights in its project
	// only; a default-role policy of another project stays narrow.
	for _, tp := range []auth.TrustPolicy{
		{ID: "tp2", ProjectID: "p2", OrgID: "o", Provider: auth.ProviderGitHub, Owner: "acme", Repo: "kit", CreatedAt: now.Add(time.Second), Role: auth.RoleProject},
		{ID: "tp3", ProjectID: "p3", OrgID: "o", Provider: auth.ProviderGitHub, Owner: "acme", Repo: "kit", CreatedAt: now.Add(2 * time.Second), Role: auth.RoleBuild},
	} {
		if err := st.CreateTrustPolicy(ctx, tp); err != nil {
			t.Fatal(err)
		}
	}
	p, err = a.Authenticate(ctx, job(nil))
	if err != nil || !slices.Equal(p.ProjectIDs, []string{"p1", "p2", "p3"}) || !slices.Equal(p.WideProjectIDs, []string{"p2"}) {
		t.Fatalf("with role policies: %+v, %v", p, err)
	}
	for proj, manage := range map[string]bool{"p1": false, "p2": true, "p3": false} {
		if got := p.CanManage(project.Project{ID: proj, OrgID: "o"}); got != manage {
			t.Errorf("%s: CanManage = %v, want %v", proj, got, manage)
		}
	}
}

func TestGlobMatch(t *testing.T) {
	for _, c := range []struct {
		pattern, s string
		want       bool
	}{
		{"refs/heads/main", "refs/heads/main", true},
		{"refs/heads/main", "refs/heads/main2", false},
		{"refs/heads/main", "refs/heads/mai", false},
		{"refs/tags/v*", "refs/tags/v1.2.3", true},
		{"refs/tags/v*", "refs/heads/v1", false},
		{"refs/heads/*", "refs/heads/a/b", true},
		{"*", "", true},
		{"", "x", false},
		{"a*b*c", "aXXbYYc", true},
		{"a*b*c", "aXXbYY", false},
		{"*@refs/heads/main", "o/r/.github/workflows/x.yml@refs/heads/main", true},
		{"*@refs/heads/main", "o/r/.github/workflows/x.yml@refs/heads/main-evil", false},
		{"a?c", "abc", false}, // '?' is literal
		{"a*", "A", false},
	} {
		if got := auth.GlobMatch(c.pattern, c.s); got != c.want {
			t.Errorf("GlobMatch(%q, %q) = %v, want %v", c.pattern, c.s, got, c.want)
		}
	}
}
