package auth_test

import (
	"testing"

	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/build"
)

// TestRightsTable pins kiln's one authorization table: every kind of
// principal against its own project, another project of its organization,
// and a project of another organization, for every action. Changing a
// right means changing this table.
func TestRightsTable(t *testing.T) {
	own := auth.Scope{ProjectID: "p1", OrgID: "o1"}
	sibling := auth.Scope{ProjectID: "p2", OrgID: "o1"}
	foreign := auth.Scope{ProjectID: "p1", OrgID: "o2"} // same id, other org

	org := auth.Principal{Kind: auth.TokenOrg, OrgID: "o1"}
	project := auth.Principal{Kind: auth.TokenProject, OrgID: "o1", ProjectID: "p1"}
	oidc := auth.Principal{Kind: auth.TokenOIDC, OrgID: "o1", ProjectIDs: []string{"p1"}}
	// A policy of p1 has role "project"; p2's policy the default role.
	wide := auth.Principal{Kind: auth.TokenOIDC, OrgID: "o1", ProjectIDs: []string{"p1", "p2"}, WideProjectIDs: []string{"p1"}}
	// Wide in a project no policy admitted it to: nothing there.
	stray := auth.Principal{Kind: auth.TokenOIDC, OrgID: "o1", ProjectIDs: []string{"p1"}, WideProjectIDs: []string{"p2"}}
	build := auth.Principal{Kind: auth.TokenBuild, OrgID: "o1", ProjectID: "p1", BuildID: "b1"}
	pull := auth.Principal{Kind: auth.TokenPull, OrgID: "o1", ProjectID: "p1"}
	noOrg := auth.Principal{Kind: auth.TokenOrg}
	unknown := auth.Principal{Kind: "bogus", OrgID: "o1", ProjectID: "p1"}

	cases := []struct {
		name string
		p    auth.Principal
		proj auth.Scope
		// allowed is the actions granted, as auth.Action.String lists them.
		allowed string
	}{
		{"org token, own project", org, own, "pull,push,delete,view,build,admin,manage"},
		{"org token, another project of its org", org, sibling, "pull,push,delete,view,build,admin,manage"},
		{"org token, another org", org, foreign, ""},
		{"project token, own project", project, own, "pull,push,delete,view,build,manage"},
		{"project token, another project", project, sibling, ""},
		{"project token, another org", project, foreign, ""},
		{"OIDC job, trusted project (default role)", oidc, own, "pull,push,view,build"},
		{"OIDC job, policy role project", wide, own, "pull,push,delete,view,build,manage"},
		{"OIDC job, default role beside a wide project", wide, sibling, "pull,push,view,build"},
		{"OIDC job, wide where no policy admitted it", stray, sibling, ""},
		{"OIDC job, untrusted project", oidc, sibling, ""},
		{"OIDC job, another org", oidc, foreign, ""},
		{"build token, its build's project", build, own, "pull,push"},
		{"build token, another project", build, sibling, ""},
		{"build token, another org", build, foreign, ""},
		{"pull token, own project", pull, own, "pull"},
		{"pull token, another project", pull, sibling, ""},
		{"pull token, another org", pull, foreign, ""},
		{"no organization", noOrg, auth.Scope{ProjectID: "p1"}, ""},
		{"unknown kind", unknown, own, ""},
	}
	for _, c := range cases {
		got := auth.RightsIn(c.p, c.proj)
		if got.String() != c.allowed {
			t.Errorf("%s: rights %q, want %q", c.name, got, c.allowed)
		}
		// The API's checks are the table's columns.
		if c.p.CanSeeProject(c.proj) != got.Has(auth.View) || c.p.CanBuild(c.proj) != got.Has(auth.Build) ||
			c.p.CanAdminProject(c.proj) != got.Has(auth.Admin) || c.p.CanManage(c.proj) != got.Has(auth.Manage) {
			t.Errorf("%s: CanSeeProject/CanBuild/CanAdminProject/CanManage disagree with the table (%q)", c.name, got)
		}
	}
}

// A build is reachable by whoever may build in its project, and by its own
// build token only.
func TestCanUseBuild(t *testing.T) {
	b := build.Build{ID: "b1", ProjectID: "p1", OrgID: "o1"}
	cases := []struct {
		name string
		p    auth.Principal
		want bool
	}{
		{"org token", auth.Principal{Kind: auth.TokenOrg, OrgID: "o1"}, true},
		{"org token of another org", auth.Principal{Kind: auth.TokenOrg, OrgID: "o2"}, false},
		{"project token", auth.Principal{Kind: auth.TokenProject, OrgID: "o1", ProjectID: "p1"}, true},
		{"another project's token", auth.Principal{Kind: auth.TokenProject, OrgID: "o1", ProjectID: "p2"}, false},
		{"OIDC job", auth.Principal{Kind: auth.TokenOIDC, OrgID: "o1", ProjectIDs: []string{"p2", "p1"}}, true},
		{"its build token", auth.Principal{Kind: auth.TokenBuild, OrgID: "o1", ProjectID: "p1", BuildID: "b1"}, true},
		{"another build's token", auth.Principal{Kind: auth.TokenBuild, OrgID: "o1", ProjectID: "p1", BuildID: "b2"}, false},
		{"pull token", auth.Principal{Kind: auth.TokenPull, OrgID: "o1", ProjectID: "p1"}, false},
	}
	for _, c := range cases {
		if got := c.p.CanUseBuild(b); got != c.want {
			t.Errorf("%s: CanUseBuild = %v, want %v", c.name, got, c.want)
		}
	}
}

// Driving a build (connecting, finishing, canceling) takes its build token
// or the right to manage its project: a CI job's default role, which
// cannot tell its own builds from another job's, drives none by its OIDC
// token.
func TestCanDriveBuild(t *testing.T) {
	b := build.Build{ID: "b1", ProjectID: "p1", OrgID: "o1"}
	cases := []struct {
		name string
		p    auth.Principal
		want bool
	}{
		{"org token", auth.Principal{Kind: auth.TokenOrg, OrgID: "o1"}, true},
		{"project token", auth.Principal{Kind: auth.TokenProject, OrgID: "o1", ProjectID: "p1"}, true},
		{"OIDC job, default role", auth.Principal{Kind: auth.TokenOIDC, OrgID: "o1", ProjectIDs: []string{"p1"}}, false},
		{"OIDC job, role project", auth.Principal{Kind: auth.TokenOIDC, OrgID: "o1", ProjectIDs: []string{"p1"}, WideProjectIDs: []string{"p1"}}, true},
		{"OIDC job, role project elsewhere", auth.Principal{Kind: auth.TokenOIDC, OrgID: "o1", ProjectIDs: []string{"p1", "p2"}, WideProjectIDs: []string{"p2"}}, false},
		{"its build token", auth.Principal{Kind: auth.TokenBuild, OrgID: "o1", ProjectID: "p1", BuildID: "b1"}, true},
		{"another build's token", auth.Principal{Kind: auth.TokenBuild, OrgID: "o1", ProjectID: "p1", BuildID: "b2"}, false},
		{"pull token", auth.Principal{Kind: auth.TokenPull, OrgID: "o1", ProjectID: "p1"}, false},
	}
	for _, c := range cases {
		if got := c.p.CanDriveBuild(b); got != c.want {
			t.Errorf("%s: CanDriveBuild = %v, want %v", c.name, got, c.want)
		}
	}
}

func TestActionNames(t *testing.T) {
	if s := (auth.Pull | auth.Delete).String(); s != "pull,delete" {
		t.Errorf("String = %q", s)
	}
	if !(auth.Pull | auth.Push).Has(auth.Push) || auth.Pull.Has(auth.Pull|auth.Push) {
		t.Errorf("Has")
	}
}
