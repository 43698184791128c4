package e2e

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"buf.build/gen/go/depot/api/connectrpc/go/depot/core/v1/corev1connect"
	corev1 "buf.build/gen/go/depot/api/protocolbuffers/go/depot/core/v1"
	"connectrpc.com/connect"
	cliv1 "github.com/depot/depot-go/proto/depot/cli/v1"

	"github.com/kiln-dev/kiln/internal/auth/oidc/oidctest"
)

// policyJobCode is the Connect code CreateBuild answers a CI job's token
// with ("" for success).
func policyJobCode(t *testing.T, s *server, project, jwt string) string {
	t.Helper()
	_, err := s.api().CreateBuild(t.Context(), bearer(&cliv1.CreateBuildRequest{ProjectId: project}, jwt))
	if err == nil {
		return ""
	}
	return connect.CodeOf(err).String()
}

// An administrator pins a repository's ids and restricts the branch, ref
// type, event, environment and workflow with `kiln trust-policies add`.
// The job meeting all of them builds; a job differing in any single one —
// an attacker's branch, a pull_request_target run, a recreated repository
// of the same name, a look-alike name with a Kelvin sign — is refused.
func TestPolicyConditions(t *testing.T) {
	t.Parallel()
	gh := oidctest.NewIssuer(t)
	gl := oidctest.NewIssuer(t)
	const aud = "kiln-test"
	s := startServer(t, "--oidc-github-issuer", gh.URL, "--oidc-gitlab-issuer", gl.URL, "--oidc-audience", aud)
	proj := s.createProject(t, "pinned")
	dir := t.TempDir()

	added := s.mustKiln(t, dir, "trust-policies", "add", "--project", proj, "--github", "acme/kit", "--json",
		"--repo-id", "101", "--owner-id", "202", "--ref", "refs/heads/release/*", "--ref-type", "branch",
		"--event", "push", "--environment", "prod", "--workflow", "acme/kit/.github/workflows/*@refs/heads/*").Stdout
	var tp struct {
		TrustPolicyID string `json:"trustPolicyId"`
		Conditions    struct{ Ref, Event string }
		Github        struct{ RepositoryID string }
		Role          string
	}
	if err := json.Unmarshal([]byte(added), &tp); err != nil || tp.TrustPolicyID == "" || tp.Conditions.Ref != "refs/heads/release/*" ||
		tp.Conditions.Event != "push" || tp.Github.RepositoryID != "101" || tp.Role != "TRUST_POLICY_ROLE_BUILD" {
		t.Fatalf("trust-policies add --json: %v\n%s", err, added)
	}
	s.mustKiln(t, dir, "trust-policies", "add", "--project", proj, "--gitlab", "acme/infra/kit",
		"--repo-id", "7", "--owner-id", "8", "--ref", "main", "--ref-type", "branch", "--event", "push", "--environment", "prod")
	list := s.mustKiln(t, dir, "trust-policies", "list", "--project", proj).Stdout
	for _, want := range []string{"repo-id=101", "ref=refs/heads/release/*", "event=push", "environment=prod", "ref=main", "build"} {
		if !strings.Contains(list, want) {
			t.Errorf("trust-policies list lacks %q:\n%s", want, list)
		}
	}

	ghJob := func(edit func(map[string]any)) string {
		c := oidctest.GitHubClaims(gh.URL, aud, "acme/kit")
		c["repository_id"], c["repository_owner_id"] = "101", "202"
		c["ref"], c["ref_type"], c["event_name"], c["environment"] = "refs/heads/release/2.0", "branch", "push", "prod"
		c["job_workflow_ref"] = "acme/kit/.github/workflows/release.yml@refs/heads/release/2.0"
		if edit != nil {
			edit(c)
		}
		return oidctest.Sign(t, gh.Key(), c)
	}
	glJob := func(edit func(map[string]any)) string {
		now := time.Now()
		c := map[string]any{"iss": gl.URL, "aud": aud, "sub": "project_path:acme/infra/kit:ref_type:branch:ref:main",
			"iat": now.Unix(), "exp": now.Add(5 * time.Minute).Unix(), "namespace_path": "acme/infra", "project_path": "acme/infra/kit",
			"project_id": "7", "namespace_id": "8", "ref": "main", "ref_type": "branch", "pipeline_source": "push", "environment": "prod"}
		if edit != nil {
			edit(c)
		}
		return oidctest.Sign(t, gl.Key(), c)
	}
	if code := policyJobCode(t, s, proj, ghJob(nil)); code != "" {
		t.Fatalf("the GitHub job meeting every condition: %s", code)
	}
	if code := policyJobCode(t, s, proj, glJob(nil)); code != "" {
		t.Fatalf("the GitLab job meeting every condition: %s", code)
	}

	set := func(k string, v any) func(map[string]any) { return func(c map[string]any) { c[k] = v } }
	unset := func(k string) func(map[string]any) { return func(c map[string]any) { delete(c, k) } }
	for name, tok := range map[string]string{
		"GitHub: a recreated repository (new repository_id)":  ghJob(set("repository_id", "999")),
		"GitHub: a recreated owner (new repository_owner_id)": ghJob(set("repository_owner_id", "999")),
		"GitHub: an attacker's branch":                        ghJob(set("ref", "refs/heads/attacker")),
		"GitHub: a tag":                                       ghJob(set("ref_type", "tag")),
		"GitHub: pull_request_target":                         ghJob(set("event_name", "pull_request_target")),
		"GitHub: another environment":                         ghJob(set("environment", "staging")),
		"GitHub: no environment":                              ghJob(unset("environment")),
		"GitHub: another repository's workflow":               ghJob(set("job_workflow_ref", "evil/x/.github/workflows/a.yml@refs/heads/main")),
		"GitHub: Kelvin sign in the repository":               ghJob(set("repository", "acme/\u212Ait")),
		"GitLab: a recreated project (new project_id)":        glJob(set("project_id", "70")),
		"GitLab: a recreated namespace (new namespace_id)":    glJob(set("namespace_id", "80")),
		"GitLab: another branch":                              glJob(set("ref", "feature")),
		"GitLab: a tag":                                       glJob(set("ref_type", "tag")),
		"GitLab: a merge request pipeline":                    glJob(set("pipeline_source", "merge_request_event")),
		"GitLab: another environment":                         glJob(set("environment", "review")),
		"GitLab: Kelvin sign in the project":                  glJob(set("project_path", "acme/infra/\u212Ait")),
	} {
		if code := policyJobCode(t, s, proj, tok); code != connect.CodePermissionDenied.String() {
			t.Errorf("%s: %q, want permission_denied", name, code)
		}
	}

	// Malformed conditions are refused before anything is stored, saying
	// what is wanted.
	for _, args := range [][]string{
		{"--github", "acme/kit", "--repo-id", "abc"},
		{"--github", "acme/kit", "--ref-type", "branches"},
		{"--github", "acme/kit", "--role", "admin"},
		{"--buildkite", "acme/deploy", "--ref", "main"},
		{"--circleci", "6b1f3a4e-5c7d-4e8f-9a0b-1c2d3e4f5a6b/0c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f", "--repo-id", "1"},
	} {
		r := s.kiln(t, dir, nil, append([]string{"trust-policies", "add", "--project", proj}, args...)...)
		if r.Err == nil || !strings.Contains(r.Stderr, "want") && !strings.Contains(r.Stderr, "only") {
			t.Errorf("add %v: err %v, stderr %q", args, r.Err, r.Stderr)
		}
	}
}

// A CI job admitted by a policy with the default role builds, and may not
// delete images, reset the cache, share builds, or finish a build it did
// not create — nor act on its own build with its OIDC token rather than
// the build's token. A policy with role "project" grants all of that.
func TestPolicyDefaultRole(t *testing.T) {
	t.Parallel()
	iss := oidctest.NewIssuer(t)
	const aud = "kiln-test"
	s := startServer(t, "--oidc-github-issuer", iss.URL, "--oidc-audience", aud)
	narrow := s.createProject(t, "ci-narrow")
	wide := s.createProject(t, "ci-wide")
	dir := t.TempDir()
	s.mustKiln(t, dir, "trust-policies", "add", "--project", narrow, "--github", "acme/app")
	if out := s.mustKiln(t, dir, "trust-policies", "add", "--project", wide, "--github", "acme/app", "--role", "project").Stdout; !strings.Contains(out, "project") {
		t.Errorf("add --role project printed:\n%s", out)
	}
	jwt := oidctest.Sign(t, iss.Key(), oidctest.GitHubClaims(iss.URL, aud, "acme/app"))
	ctx := t.Context()
	builds := corev1connect.NewBuildServiceClient(http.DefaultClient, s.URL)

	code := func(err error) string {
		if err == nil {
			return ""
		}
		return connect.CodeOf(err).String()
	}
	// rights tries, in project, each thing the default role may not do;
	// every build it opens is finished by the time it returns.
	rights := func(project string) map[string]string {
		others, _ := s.createBuild(t, project, s.Token) // an administrator's build
		mine, mineTok := s.createBuild(t, project, jwt) // the job's own build
		got := map[string]string{}
		status, body := rawJSON(t, s, jwt, "depot.build.v1.RegistryService/DeleteImage", map[string]any{"projectId": project, "imageTags": []string{"app:1"}})
		got["DeleteImage"] = ""
		if status != http.StatusOK {
			got["DeleteImage"], _ = body["code"].(string)
		}
		status, body = rawJSON(t, s, jwt, "depot.cli.v1beta1.ProjectsService/ResetProjectCache", map[string]any{"projectId": project})
		got["ResetProjectCache"] = ""
		if status != http.StatusOK {
			got["ResetProjectCache"], _ = body["code"].(string)
		}
		_, err := builds.ShareBuild(ctx, bearer(&corev1.ShareBuildRequest{BuildId: others}, jwt))
		got["ShareBuild"] = code(err)
		_, err = s.api().ReportBuildHealth(ctx, bearer(&cliv1.ReportBuildHealthRequest{BuildId: others}, jwt))
		got["ReportBuildHealth of another's build"] = code(err)
		_, err = s.api().FinishBuild(ctx, bearer(&cliv1.FinishBuildRequest{BuildId: others,
			Result: &cliv1.FinishBuildRequest_Error{Error: &cliv1.FinishBuildRequest_BuildError{Error: "stopped by a CI job"}}}, jwt))
		got["FinishBuild of another's build"] = code(err)
		_, err = s.api().FinishBuild(ctx, bearer(&cliv1.FinishBuildRequest{BuildId: mine,
			Result: &cliv1.FinishBuildRequest_Success{Success: &cliv1.FinishBuildRequest_BuildSuccess{}}}, jwt))
		got["FinishBuild of its own build by its OIDC token"] = code(err)
		// The job drives its own build with the build's token; the
		// administrator ends the other (either may have ended already
		// where the job's role allowed it to finish them).
		_, err = s.api().FinishBuild(ctx, bearer(&cliv1.FinishBuildRequest{BuildId: mine,
			Result: &cliv1.FinishBuildRequest_Success{Success: &cliv1.FinishBuildRequest_BuildSuccess{}}}, mineTok))
		if err != nil && got["FinishBuild of its own build by its OIDC token"] != "" {
			t.Errorf("FinishBuild of its own build with its build token: %v", err)
		}
		_, err = s.api().FinishBuild(ctx, bearer(&cliv1.FinishBuildRequest{BuildId: others,
			Result: &cliv1.FinishBuildRequest_Success{Success: &cliv1.FinishBuildRequest_BuildSuccess{}}}, s.Token))
		if err != nil && connect.CodeOf(err) != connect.CodeFailedPrecondition {
			t.Errorf("FinishBuild of the administrator's build: %v", err)
		}
		return got
	}

	// Through the registry itself: the default role pushes and pulls,
	// and its DELETE is refused; role project deletes.
	s.requireRegistry(t)
	c := s.oci(t, jwt)
	img, _ := c.pushImage(narrow+"/app", "v1", "narrow")
	c.expect(http.StatusOK, "GET", "/v2/"+narrow+"/app/manifests/v1", nil)
	c.expectError(http.StatusForbidden, "DENIED", "DELETE", "/v2/"+narrow+"/app/manifests/"+img.Digest.String(), nil)
	img, _ = c.pushImage(wide+"/app", "v1", "wide")
	c.expect(http.StatusAccepted, "DELETE", "/v2/"+wide+"/app/manifests/"+img.Digest.String(), nil)

	for call, c := range rights(narrow) {
		if c != connect.CodePermissionDenied.String() {
			t.Errorf("default role: %s answered %q, want permission_denied", call, c)
		}
	}
	for call, c := range rights(wide) {
		if c != "" {
			t.Errorf("role project: %s answered %q, want success", call, c)
		}
	}
	// The job still builds where its role is the default.
	if code := policyJobCode(t, s, narrow, jwt); code != "" {
		t.Errorf("CreateBuild with the default role: %s", code)
	}
}
