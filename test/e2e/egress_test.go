package e2e

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"
)

// An operator opens a private mirror's range to one project with
// `kiln projects update --egress-allow`; the project's own token (what a
// tenant holds) can read the list but never change it.
func TestEgressAllowList(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	proj := s.createProject(t, "egress-admin")
	other := s.createProject(t, "egress-other")
	dir := t.TempDir()
	prj := strings.TrimSpace(s.mustKiln(t, dir, "tokens", "create", "--project", proj).Stdout)
	if !strings.HasPrefix(prj, "kiln_prj_") {
		t.Fatalf("tokens create printed %q", prj)
	}
	asProject := []string{"KILN_TOKEN=" + prj}
	egressOf := func(env []string, id string) []string {
		t.Helper()
		r := s.kiln(t, dir, env, "projects", "get", id, "--json")
		if r.Err != nil {
			t.Fatalf("projects get %s: %v\n%s", id, r.Err, r.Stderr)
		}
		var p struct {
			ProjectID   string   `json:"project_id"`
			EgressAllow []string `json:"egress_allow"`
		}
		if err := json.Unmarshal([]byte(r.Stdout), &p); err != nil || p.ProjectID != id || p.EgressAllow == nil {
			t.Fatalf("projects get --json: %v\n%s", err, r.Stdout)
		}
		return p.EgressAllow
	}
	if got := egressOf(nil, proj); len(got) != 0 {
		t.Errorf("a new project allows %q, want nothing", got)
	}

	// The tenant tries to open the host's private ranges for itself.
	for _, args := range [][]string{
		{"projects", "update", proj, "--egress-allow", "10.0.0.0/8"},
		{"projects", "update", proj, "--egress-allow", "none"},
		{"projects", "update", other, "--egress-allow", "10.0.0.0/8"},
	} {
		r := s.kiln(t, dir, asProject, args...)
		if r.Err == nil {
			t.Errorf("a project token ran kiln %s:\n%s", strings.Join(args, " "), r.Stdout)
		} else if !strings.Contains(r.Stderr, "organization token") && !strings.Contains(r.Stderr, "not found") {
			t.Errorf("kiln %s with a project token: want PermissionDenied (organization token) or NotFound, got:\n%s", strings.Join(args, " "), r.Stderr)
		}
	}
	if got := egressOf(nil, proj); len(got) != 0 {
		t.Fatalf("ISOLATION: a project token changed its own egress allow-list to %q", got)
	}

	// The operator (organization token) can, repeatable and comma-separated.
	r := s.mustKiln(t, dir, "projects", "update", proj, "--egress-allow", "10.199.7.0/24", "--egress-allow", "FD00:9::/64,192.168.7.10/32")
	if !strings.Contains(r.Stdout, "10.199.7.0/24,fd00:9::/64,192.168.7.10/32") {
		t.Errorf("projects update prints the new list canonically:\n%s", r.Stdout)
	}
	want := []string{"10.199.7.0/24", "fd00:9::/64", "192.168.7.10/32"}
	if got := egressOf(nil, proj); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("after update: %q, want %q", got, want)
	}
	// The project's own token reads it (its builds are the ones affected)…
	if got := egressOf(asProject, proj); len(got) != 3 {
		t.Errorf("project token reading its list: %q", got)
	}
	// …but not another project's.
	if r := s.kiln(t, dir, asProject, "projects", "get", other); r.Err == nil {
		t.Errorf("a project token read another project:\n%s", r.Stdout)
	}
	if got := egressOf(nil, other); len(got) != 0 {
		t.Errorf("the other project allows %q after %s's list was set", got, proj)
	}
	// Other flags keep working and leave the list alone.
	s.mustKiln(t, dir, "projects", "update", proj, "--name", "egress-renamed", "--keep-gb", "7")
	if got := egressOf(nil, proj); len(got) != 3 {
		t.Errorf("a rename changed the allow-list to %q", got)
	}
	if r := s.mustKiln(t, dir, "projects", "get", proj); !strings.Contains(r.Stdout, "egress-renamed") || !strings.Contains(r.Stdout, "EGRESS ALLOW") {
		t.Errorf("projects get:\n%s", r.Stdout)
	}

	// Bad lists are refused with what was wrong, and change nothing.
	for _, c := range []struct{ value, want string }{
		{"10.199.7.1/24", "did you mean 10.199.7.0/24"},
		{"0.0.0.0/0", "public addresses are reachable"},
		{"::/0", "public addresses are reachable"},
		{"169.254.169.254/32", "metadata"},
		{"127.0.0.0/8", "loopback"},
		{"not-a-cidr", `"not-a-cidr"`},
		{"none,10.0.0.0/8", "cannot be combined"},
	} {
		r := s.kiln(t, dir, nil, "projects", "update", proj, "--egress-allow", c.value)
		if r.Err == nil || !strings.Contains(r.Stderr, c.want) {
			t.Errorf("--egress-allow %s: err=%v stderr=%q, want %q", c.value, r.Err, r.Stderr, c.want)
		}
	}
	tooMany := []string{"projects", "update", proj}
	for i := range 33 {
		tooMany = append(tooMany, "--egress-allow", "10."+strconv.Itoa(i)+".0.0/16")
	}
	if r := s.kiln(t, dir, nil, tooMany...); r.Err == nil || !strings.Contains(r.Stderr, "at most 32") {
		t.Errorf("33 CIDRs: err=%v stderr=%q", r.Err, r.Stderr)
	}
	if got := egressOf(nil, proj); len(got) != 3 {
		t.Errorf("refused updates changed the list to %q", got)
	}

	// The change is in the audit log; none clears the list.
	if r := s.mustKiln(t, dir, "audit", "--kind", "project_egress_changed"); strings.Count(r.Stdout, "project_egress_changed") != 1 || !strings.Contains(r.Stdout, proj) {
		t.Errorf("audit log of egress changes:\n%s", r.Stdout)
	}
	s.mustKiln(t, dir, "projects", "update", proj, "--egress-allow", "none")
	if got := egressOf(nil, proj); len(got) != 0 {
		t.Errorf("after --egress-allow none: %q", got)
	}
}
