package project_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/project"
	"github.com/kiln-dev/kiln/internal/store"
)

// orgStore is a new store holding organization "o" and its projects.
func orgStore(t *testing.T, projects ...string) *store.SQLite {
	t.Helper()
	ctx := context.Background()
	st, err := store.OpenSQLite(ctx, filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	now := time.Now()
	st.CreateOrganization(ctx, project.Organization{ID: "o", Name: "o", CreatedAt: now})
	for _, p := range projects {
		st.CreateProject(ctx, project.Project{ID: p, OrgID: "o", Name: p, CreatedAt: now})
	}
	return st
}
