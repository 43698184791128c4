package auth_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/auth/oidc"
	"github.com/kiln-dev/kiln/internal/auth/oidc/oidctest"
	"github.com/kiln-dev/kiln/internal/project"
	"github.com/kiln-dev/kiln/internal/store"
)

// oidcAuth is an authenticator over a new store holding organization "o"
// and projects, trusting a local issuer as GitHub's (and, under /gitlab,
// GitLab's).
func oidcAuth(t *testing.T, projects ...string) (*store.SQLite, *oidctest.Issuer, *auth.Authenticator) {
	t.Helper()
	ctx := context.Background()
	st, err := store.OpenSQLite(ctx, filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	iss := oidctest.NewIssuer(t)
	v, err := oidc.NewVerifier(oidc.Config{Audience: "kiln", GitHubIssuer: iss.URL, GitLabIssuer: iss.URL + "/gitlab"})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	st.CreateOrganization(ctx, project.Organization{ID: "o", Name: "o", CreatedAt: now})
	for _, p := range projects {
		st.CreateProject(ctx, project.Project{ID: p, OrgID: "o", Name: p, CreatedAt: now})
	}
	return st, iss, &auth.Authenticator{Store: st, OIDC: v}
}
