package auth

import (
	"slices"
	"strings"
)

// Action is a set of things a principal may do in a project. The API asks
// for View, Build, Manage and Admin; the registry for Pull, Push and
// Delete (the actions of its token scopes).
type Action uint8

const (
	// Pull reads the images saved in the project's repositories.
	Pull Action = 1 << iota
	// Push writes images into them.
	Push
	// Delete removes images from them.
	Delete
	// View reads the project and its builds.
	View
	// Build creates builds in the project.
	Build
	// Admin changes the project itself: settings, tokens, trust policies,
	// deletion.
	Admin
	// Manage looks after the project's builds beyond one's own: reset
	// its cache, share builds publicly, and drive (connect, finish,
	// cancel, report on) builds the caller did not create.
	Manage
)

var actionNames = []struct {
	a    Action
	name string
}{{Pull, "pull"}, {Push, "push"}, {Delete, "delete"}, {View, "view"}, {Build, "build"}, {Admin, "admin"}, {Manage, "manage"}}

// Has reports whether a includes every action of want.
func (a Action) Has(want Action) bool { return a&want == want }

// Names lists a's actions, in the order pull, push, delete, view, build,
// admin, manage.
func (a Action) Names() []string {
	var out []string
	for _, x := range actionNames {
		if a&x.a != 0 {
			out = append(out, x.name)
		}
	}
	return out
}

// String is a's names joined by commas ("pull,push").
func (a Action) String() string { return strings.Join(a.Names(), ",") }

// RightsIn is what p may do in proj. It is kiln's one authorization table;
// the API's checks (CanSeeProject, CanBuild, CanManage, CanAdminProject,
// CanUseBuild, CanDriveBuild) and the registry's all read it:
//
//	                          view build manage admin  pull push delete
//	organization token         ✓     ✓     ✓      ✓     ✓    ✓    ✓     any project of its org
//	project token              ✓     ✓     ✓            ✓    ✓    ✓     its project
//	OIDC job, policy role      ✓     ✓     ✓            ✓    ✓    ✓     projects whose matched
//	  "project"                                                           policy says so
//	OIDC job, default role     ✓     ✓                  ✓    ✓          its project(s)
//	build token                                         ✓    ✓          its build's project
//	pull token                                          ✓               its project
//
// A CI job's default role builds and pushes and pulls: it drives its own
// builds with the build token CreateBuild returns (CanDriveBuild), and may
// not delete images, reset the cache, share builds, or connect to, finish
// or cancel builds it did not create.
//
// Nothing outside the principal's organization, and nothing for a
// principal of no organization.
func RightsIn(p Principal, proj Scoped) Action {
	s := proj.Scope()
	if s.OrgID != p.OrgID || p.OrgID == "" {
		return 0
	}
	const member = View | Build | Manage | Pull | Push | Delete
	switch p.Kind {
	case TokenOrg:
		return member | Admin
	case TokenProject:
		if p.ProjectID == s.ProjectID {
			return member
		}
	case TokenOIDC:
		if slices.Contains(p.WideProjectIDs, s.ProjectID) && slices.Contains(p.ProjectIDs, s.ProjectID) {
			return member
		}
		if slices.Contains(p.ProjectIDs, s.ProjectID) {
			return View | Build | Pull | Push
		}
	case TokenBuild:
		if p.ProjectID == s.ProjectID {
			return Pull | Push
		}
	case TokenPull:
		if p.ProjectID == s.ProjectID {
			return Pull
		}
	}
	return 0
}
