package auth_test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/build"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/project"
	"github.com/kiln-dev/kiln/internal/store"
)

func TestAuthenticate(t *testing.T) {
	ctx := context.Background()
	st, err := store.OpenSQLite(ctx, filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	now := time.Now()
	live, liveHash := auth.NewSecret(auth.TokenProject)
	old, oldHash := auth.NewSecret(auth.TokenBuild)
	st.CreateToken(ctx, auth.Token{ID: "t1", Kind: auth.TokenProject, OrgID: "o", ProjectID: "p", SecretHash: liveHash, CreatedAt: now})
	st.CreateToken(ctx, auth.Token{ID: "t2", Kind: auth.TokenBuild, OrgID: "o", ProjectID: "p", BuildID: "b", SecretHash: oldHash,
		CreatedAt: now.Add(-2 * time.Hour), ExpiresAt: now.Add(-time.Hour)})
	a := &auth.Authenticator{Store: st}

	p, err := a.Authenticate(ctx, live)
	if err != nil || p.Kind != auth.TokenProject || p.ProjectID != "p" || p.TokenID != "t1" {
		t.Fatalf("live token: %+v, %v", p, err)
	}
	if !strings.HasPrefix(live, "kiln_prj_") || strings.Contains(liveHash, live) {
		t.Errorf("token %q / hash %q: want a prefixed token stored only hashed", live, liveHash)
	}
	forged := "kiln_org_" + strings.Repeat("a", 40)
	for name, secret := range map[string]string{
		"expired": old, "unknown": forged, "empty": "", "no prefix": "hello",
		"huge": "kiln_org_" + strings.Repeat("x", 10000), "hash as token": liveHash,
	} {
		if _, err := a.Authenticate(ctx, secret); !errors.Is(err, errdefs.ErrUnauthenticated) {
			t.Errorf("%s: %v, want ErrUnauthenticated", name, err)
		}
	}
	st.DeleteToken(ctx, "t1")
	if _, err := a.Authenticate(ctx, live); !errors.Is(err, errdefs.ErrUnauthenticated) {
		t.Errorf("deleted token still accepted: %v", err)
	}
}

// A build token reaches its build only while the build runs: after it
// ended (or if it never existed) the token is as good as unknown.
func TestBuildTokenDiesWithItsBuild(t *testing.T) {
	ctx := context.Background()
	st, err := store.OpenSQLite(ctx, filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	now := time.Now()
	st.CreateBuild(ctx, build.Build{ID: "b1", ProjectID: "p", OrgID: "o", Status: build.Running, CreatedAt: now})
	tok, hash := auth.NewSecret(auth.TokenBuild)
	st.CreateToken(ctx, auth.Token{ID: "t1", Kind: auth.TokenBuild, OrgID: "o", ProjectID: "p", BuildID: "b1", SecretHash: hash, CreatedAt: now})
	orphan, orphanHash := auth.NewSecret(auth.TokenBuild)
	st.CreateToken(ctx, auth.Token{ID: "t2", Kind: auth.TokenBuild, OrgID: "o", ProjectID: "p", BuildID: "gone", SecretHash: orphanHash, CreatedAt: now})
	a := &auth.Authenticator{Store: st}
	if p, err := a.Authenticate(ctx, tok); err != nil || p.BuildID != "b1" {
		t.Fatalf("running build's token: %+v, %v", p, err)
	}
	st.UpdateBuild(ctx, "b1", func(b *build.Build) error { b.Status = build.Succeeded; return nil })
	if _, err := a.Authenticate(ctx, tok); !errors.Is(err, errdefs.ErrUnauthenticated) {
		t.Errorf("token of a finished build: %v, want ErrUnauthenticated", err)
	}
	if _, err := a.Authenticate(ctx, orphan); !errors.Is(err, errdefs.ErrUnauthenticated) {
		t.Errorf("token of a missing build: %v, want ErrUnauthenticated", err)
	}
}

func TestScopes(t *testing.T) {
	pa := project.Project{ID: "pa", OrgID: "o"}
	pb := project.Project{ID: "pb", OrgID: "o"}
	other := project.Project{ID: "px", OrgID: "o2"}
	org := auth.Principal{Kind: auth.TokenOrg, OrgID: "o"}
	prj := auth.Principal{Kind: auth.TokenProject, OrgID: "o", ProjectID: "pa"}
	bld := auth.Principal{Kind: auth.TokenBuild, OrgID: "o", ProjectID: "pa", BuildID: "b1"}
	if !org.CanAdminProject(pa) || org.CanSeeProject(other) || org.CanAdminProject(other) {
		t.Error("org token scope")
	}
	if !prj.CanBuild(pa) || prj.CanSeeProject(pb) || prj.CanAdminProject(pa) {
		t.Error("project token scope: builds in its project, administers nothing")
	}
	oidc := auth.Principal{Kind: auth.TokenOIDC, OrgID: "o", ProjectIDs: []string{"pb"}}
	if !oidc.CanBuild(pb) || oidc.CanBuild(pa) || oidc.CanAdminProject(pb) {
		t.Error("OIDC scope: builds in matched projects only")
	}
	if bld.CanSeeProject(pa) || bld.CanBuild(pa) {
		t.Error("build tokens see no project")
	}
	if !bld.CanUseBuild(build.Build{ID: "b1", ProjectID: "pa", OrgID: "o"}) || bld.CanUseBuild(build.Build{ID: "b2", ProjectID: "pa", OrgID: "o"}) {
		t.Error("build token reaches exactly its build")
	}
}
