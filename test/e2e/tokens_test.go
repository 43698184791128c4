package e2e

import (
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	cliv1 "github.com/depot/depot-go/proto/depot/cli/v1"
)

// Token kinds and expiry as an operator manages them with `kiln tokens`.
func TestTokenKindsAndExpiry(t *testing.T) {
	t.Parallel()
	s := sharedServer(t)
	projA := s.createProject(t, "tok-a")
	projB := s.createProject(t, "tok-b")
	dir := t.TempDir()
	create := func(args ...string) (secret, id string) {
		t.Helper()
		r := s.mustKiln(t, dir, append([]string{"tokens", "create"}, args...)...)
		secret = strings.TrimSpace(r.Stdout)
		for _, f := range strings.Fields(r.Stderr) {
			if strings.HasPrefix(f, "tok_") {
				id = f
			}
		}
		if secret == "" || id == "" {
			t.Fatalf("tokens create %v printed %q / %q", args, r.Stdout, r.Stderr)
		}
		return secret, id
	}
	prj, prjID := create("--project", projA, "--description", "ci", "--expires", "720h")
	pull, _ := create("--project", projA, "--kind", "pull", "--expires", "1h")
	org, orgID := create("--kind", "organization", "--description", "ops")
	short, _ := create("--project", projA, "--expires", "1s")

	if !strings.HasPrefix(prj, "kiln_prj_") || !strings.HasPrefix(pull, "kiln_pul_") || !strings.HasPrefix(org, "kiln_org_") {
		t.Errorf("token prefixes: %q %q %q", prj[:9], pull[:9], org[:9])
	}
	if r := s.mustKiln(t, dir, "tokens", "list", "--project", projA); !strings.Contains(r.Stdout, prjID) || !strings.Contains(r.Stdout, "pull") {
		t.Errorf("tokens list --project:\n%s", r.Stdout)
	}
	if r := s.mustKiln(t, dir, "tokens", "list"); !strings.Contains(r.Stdout, orgID) || strings.Contains(r.Stdout, prjID) {
		t.Errorf("tokens list (organization):\n%s", r.Stdout)
	}

	// A project token builds in its project only and administers nothing.
	if _, _, err := createBuildErr(t, s, projA, prj); err != nil {
		t.Errorf("project token creating a build in its project: %v", err)
	}
	if _, _, err := createBuildErr(t, s, projB, prj); connect.CodeOf(err) != connect.CodePermissionDenied ||
		!strings.Contains(err.Error(), "this token belongs to project "+projA+"; it cannot build in project "+projB) {
		t.Errorf("project token in another project: %v, want PermissionDenied naming both projects", err)
	}
	if r := s.kiln(t, dir, []string{"KILN_TOKEN=" + prj}, "tokens", "create", "--project", projA); r.Err == nil {
		t.Errorf("a project token minted a project token")
	}
	// A pull token reaches no API at all.
	for _, args := range [][]string{{"projects", "list"}, {"tokens", "list", "--project", projA}} {
		if r := s.kiln(t, dir, []string{"KILN_TOKEN=" + pull}, args...); r.Err == nil {
			t.Errorf("pull token ran kiln %v:\n%s", args, r.Stdout)
		}
	}
	if _, _, err := createBuildErr(t, s, projA, pull); err == nil {
		t.Errorf("pull token created a build")
	}
	// The new organization token works like the admin's.
	if r := s.kiln(t, dir, []string{"KILN_TOKEN=" + org}, "projects", "list"); r.Err != nil || !strings.Contains(r.Stdout, projB) {
		t.Errorf("organization token: %v %s", r.Err, r.Stderr)
	}
	// Expiry and revocation take effect on the next request: once the 1 s
	// token is refused anywhere (polled read-only), building with it is too.
	eventually(t, 10*time.Second, "the 1s token to expire", func() bool {
		_, err := s.api().ListBuilds(t.Context(), bearer(&cliv1.ListBuildsRequest{ProjectId: projA}, short))
		return connect.CodeOf(err) == connect.CodeUnauthenticated
	})
	if _, _, err := createBuildErr(t, s, projA, short); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Errorf("expired token: %v, want Unauthenticated", err)
	}
	s.mustKiln(t, dir, "tokens", "delete", orgID)
	if r := s.kiln(t, dir, []string{"KILN_TOKEN=" + org}, "projects", "list"); r.Err == nil || !strings.Contains(r.Stderr, "invalid or expired") {
		t.Errorf("deleted organization token still works: %v %s", r.Err, r.Stderr)
	}
	// Bad input names the problem.
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"tokens", "create", "--project", projA, "--kind", "root"}, "--kind"},
		{[]string{"tokens", "create", "--project", projA, "--expires", "-1h"}, "--expires"},
		{[]string{"tokens", "create", "--project", projA, "--expires", "900000h"}, "10 years"},
		{[]string{"tokens", "create", "--kind", "pull"}, "--project"},
		{[]string{"tokens", "create", "--project", "nope"}, "not found"},
	} {
		if r := s.kiln(t, dir, nil, c.args...); r.Err == nil || !strings.Contains(r.Stderr, c.want) {
			t.Errorf("kiln %v: err=%v stderr=%q, want %q", c.args, r.Err, r.Stderr, c.want)
		}
	}

	// GetPullToken (depot CLI) hands out a short-lived pull token.
	res, err := s.api().GetPullToken(t.Context(), bearer(&cliv1.GetPullTokenRequest{ProjectId: &projA}, s.Token))
	if err != nil || !strings.HasPrefix(res.Msg.Token, "kiln_pul_") {
		t.Errorf("GetPullToken: %v %v", res, err)
	}
	if _, err := s.api().GetPullToken(t.Context(), bearer(&cliv1.GetPullTokenRequest{ProjectId: &projB}, prj)); connect.CodeOf(err) != connect.CodeNotFound {
		t.Errorf("GetPullToken for another project with a project token: %v", err)
	}
}

func createBuildErr(t *testing.T, s *server, project, token string) (string, string, error) {
	res, err := s.api().CreateBuild(t.Context(), bearer(&cliv1.CreateBuildRequest{ProjectId: project}, token))
	if err != nil {
		return "", "", err
	}
	s.api().FinishBuild(t.Context(), bearer(&cliv1.FinishBuildRequest{BuildId: res.Msg.BuildId}, res.Msg.BuildToken))
	return res.Msg.BuildId, res.Msg.BuildToken, nil
}
