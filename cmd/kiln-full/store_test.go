package main

import (
	"bytes"
	"context"
	"net/url"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/internal/project"
	"github.com/kiln-dev/kiln/internal/store"
	"github.com/kiln-dev/kiln/internal/store/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// kiln store migrate copies a data directory's database to Postgres, says
// what it copied without showing the password, and refuses a second run
// into the now non-empty database.
func TestStoreMigrate(t *testing.T) {
	ctx := context.Background()
	data := t.TempDir()
	lite, err := store.OpenSQLite(ctx, filepath.Join(data, "kiln.db"))
	if err != nil {
		t.Fatal(err)
	}
	if err := lite.CreateOrganization(ctx, project.Organization{ID: "org", Name: "Acme"}); err != nil {
		t.Fatal(err)
	}
	if err := lite.CreateProject(ctx, project.Project{ID: "p1", OrgID: "org", Name: "app"}); err != nil {
		t.Fatal(err)
	}
	lite.Close()

	// The test server trusts its socket: a password in the URL is not
	// checked, only never shown.
	u, err := url.Parse(pgtest.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(u.User.Username(), "s3cret-pw")
	target := u.String()
	t.Setenv("KILN_STORE", target)

	run := func(args ...string) (string, error) {
		var out bytes.Buffer
		cmd := newStoreCmd()
		cmd.SetArgs(args)
		cmd.SetOut(&out)
		cmd.SetErr(&out)
		cmd.SilenceUsage = true
		err := cmd.ExecuteContext(ctx)
		if err != nil {
			out.WriteString(err.Error())
		}
		return out.String(), err
	}
	out, err := run("migrate", "--from", "sqlite:"+data)
	if err != nil {
		t.Fatalf("migrate: %v\n%s", err, out)
	}
	all := out
	for _, want := range []string{"organizations", "projects", "every table's count matches", "xxxxx"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	pg, err := store.OpenPostgres(ctx, target)
	if err != nil {
		t.Fatal(err)
	}
	defer pg.Close()
	if p, err := pg.GetProject(ctx, "p1"); err != nil || p.Name != "app" {
		t.Errorf("project in Postgres: %+v, %v", p, err)
	}

	out, err = run("migrate", "--from", "sqlite:"+data, "--to", target)
	if err == nil || !strings.Contains(out, "not empty") {
		t.Errorf("second migrate: %v\n%s", err, out)
	}
	all += out
	if _, err := run("migrate", "--from", "sqlite:"+filepath.Join(data, "missing")); err == nil {
		t.Error("migrate from a missing database: no error")
	}
	if strings.Contains(all, "s3cret-pw") {
		t.Errorf("output shows the password:\n%s", all)
	}
}
