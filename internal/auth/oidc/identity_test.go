package oidc_test

import (
	"context"
	"testing"

	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/auth/oidc"
	"github.com/kiln-dev/kiln/internal/auth/oidc/oidctest"
	"github.com/kiln-dev/kiln/internal/errdefs"
)

// The ids and job context a trust policy may pin come from each
// provider's own claims; a claim of the wrong type is a malformed token,
// not an empty one.
func TestIdentityJobClaims(t *testing.T) {
	iss := oidctest.NewIssuer(t)
	ctx := context.Background()

	gh, _ := newVerifier(t, iss)
	id, err := gh.Verify(ctx, oidctest.Sign(t, iss.Key(), ghClaims(iss, func(c map[string]any) {
		c["repository_id"] = "101"
		c["repository_owner_id"] = "202"
		c["ref_type"] = "branch"
		c["event_name"] = "push"
		c["environment"] = "prod"
		c["job_workflow_ref"] = "acme/app/.github/workflows/ci.yml@refs/heads/main"
	})))
	want := auth.Identity{RepoID: "101", OwnerID: "202", Ref: "refs/heads/main", RefType: "branch", Event: "push",
		Environment: "prod", Workflow: "acme/app/.github/workflows/ci.yml@refs/heads/main"}
	if err != nil || id.RepoID != want.RepoID || id.OwnerID != want.OwnerID || id.Ref != want.Ref || id.RefType != want.RefType ||
		id.Event != want.Event || id.Environment != want.Environment || id.Workflow != want.Workflow {
		t.Errorf("github identity = %+v, %v", id, err)
	}
	// A numeric id reads as its digits (it must not slip past a pinned id).
	id, err = gh.Verify(ctx, oidctest.Sign(t, iss.Key(), ghClaims(iss, func(c map[string]any) { c["repository_id"] = 101 })))
	if err != nil || id.RepoID != "101" {
		t.Errorf("numeric repository_id: %+v, %v", id, err)
	}
	// Absent claims are empty.
	id, err = gh.Verify(ctx, oidctest.Sign(t, iss.Key(), ghClaims(iss, func(c map[string]any) { delete(c, "ref") })))
	if err != nil || id.Ref != "" || id.RepoID != "" || id.Event != "" {
		t.Errorf("no job claims: %+v, %v", id, err)
	}
	for name, bad := range map[string]any{"event_name": []string{"push"}, "repository_id": 1.5, "ref": map[string]any{"x": 1}, "environment": true} {
		_, err := gh.Verify(ctx, oidctest.Sign(t, iss.Key(), ghClaims(iss, func(c map[string]any) { c[name] = bad })))
		wantReason(t, name+" of the wrong type", err, oidc.ErrClaims, errdefs.ErrUnauthenticated)
	}

	gl, _ := newVerifier(t, iss, func(c *oidc.Config) { c.GitHubIssuer, c.GitLabIssuer = "", iss.URL })
	c := ghClaims(iss)
	for k, v := range map[string]any{"namespace_path": "group", "project_path": "group/app", "project_id": "7", "namespace_id": "8",
		"ref": "main", "ref_type": "branch", "pipeline_source": "push", "environment": "staging"} {
		c[k] = v
	}
	id, err = gl.Verify(ctx, oidctest.Sign(t, iss.Key(), c))
	if err != nil || id.RepoID != "7" || id.OwnerID != "8" || id.Ref != "main" || id.RefType != "branch" ||
		id.Event != "push" || id.Environment != "staging" || id.Workflow != "" {
		t.Errorf("gitlab identity = %+v, %v", id, err)
	}
}
