package storetest

import (
	"context"
	"slices"
	"testing"

	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/project"
	"github.com/kiln-dev/kiln/internal/store"
)

// egressAllow: a project's egress allow-list round-trips in order (IPv4
// and IPv6), is the project's alone, survives UpdateProject, and clears.
func egressAllow(t *testing.T, s store.Store) {
	ctx := context.Background()
	seed(t, s, "o1", "p1", "p2")
	if p, _ := s.GetProject(ctx, "p1"); len(p.EgressAllow) != 0 {
		t.Errorf("a new project allows %v, want nothing", p.EgressAllow)
	}
	want := []string{"10.9.0.0/16", "fd00:9::/64", "192.168.7.0/24"}
	if err := s.SetProjectEgressAllow(ctx, "p1", want); err != nil {
		t.Fatal(err)
	}
	if p, err := s.GetProject(ctx, "p1"); err != nil || !slices.Equal(p.EgressAllow, want) {
		t.Errorf("GetProject(p1).EgressAllow = %v, %v; want %v", p.EgressAllow, err, want)
	}
	if p, _ := s.GetProject(ctx, "p2"); len(p.EgressAllow) != 0 {
		t.Errorf("p2 allows %v after p1's list was set: lists must be per project", p.EgressAllow)
	}
	list, _ := s.ListProjects(ctx, "o1")
	for _, p := range list {
		if p.ID == "p1" && !slices.Equal(p.EgressAllow, want) {
			t.Errorf("ListProjects: p1 allows %v, want %v", p.EgressAllow, want)
		}
	}

	// A rename from a copy read before the list changed must not undo it.
	stale, _ := s.GetProject(ctx, "p2")
	if err := s.SetProjectEgressAllow(ctx, "p2", []string{"10.1.0.0/16"}); err != nil {
		t.Fatal(err)
	}
	stale.Name, stale.EgressAllow = "renamed", nil
	if err := s.UpdateProject(ctx, stale); err != nil {
		t.Fatal(err)
	}
	if p, _ := s.GetProject(ctx, "p2"); p.Name != "renamed" || !slices.Equal(p.EgressAllow, []string{"10.1.0.0/16"}) {
		t.Errorf("after UpdateProject: name %q, egress %v; want the list kept", p.Name, p.EgressAllow)
	}

	// Replacing and clearing.
	if err := s.SetProjectEgressAllow(ctx, "p1", []string{"2001:db8::/32"}); err != nil {
		t.Fatal(err)
	}
	if p, _ := s.GetProject(ctx, "p1"); !slices.Equal(p.EgressAllow, []string{"2001:db8::/32"}) {
		t.Errorf("after replacing: %v", p.EgressAllow)
	}
	if err := s.SetProjectEgressAllow(ctx, "p1", nil); err != nil {
		t.Fatal(err)
	}
	if p, _ := s.GetProject(ctx, "p1"); len(p.EgressAllow) != 0 {
		t.Errorf("after clearing: %v (%d entries), want none", p.EgressAllow, len(p.EgressAllow))
	}
	if err := s.SetProjectEgressAllow(ctx, "nope", []string{"10.0.0.0/8"}); !errdefs.IsNotFound(err) {
		t.Errorf("SetProjectEgressAllow(nope): %v, want not found", err)
	}

	// A customer project created with a list keeps it.
	cp, _, err := s.GetOrCreateCustomerProject(ctx, project.Project{ID: "c1", OrgID: "o1", Name: "c", CustomerID: "acme",
		EgressAllow: []string{"172.16.0.0/12"}, CreatedAt: now})
	if err != nil || !slices.Equal(cp.EgressAllow, []string{"172.16.0.0/12"}) {
		t.Errorf("customer project: %+v, %v", cp, err)
	}
	// A deleted project's list goes with it.
	if err := s.DeleteProject(ctx, "p2"); err != nil {
		t.Fatal(err)
	}
	if err := s.SetProjectEgressAllow(ctx, "p2", []string{"10.0.0.0/8"}); !errdefs.IsNotFound(err) {
		t.Errorf("SetProjectEgressAllow on a deleted project: %v, want not found", err)
	}
}
