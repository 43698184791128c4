package e2e

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"buf.build/gen/go/depot/api/connectrpc/go/depot/core/v1/corev1connect"
	corev1 "buf.build/gen/go/depot/api/protocolbuffers/go/depot/core/v1"
	"connectrpc.com/connect"
	cliv1 "github.com/depot/depot-go/proto/depot/cli/v1"

	"github.com/kiln-dev/kiln/internal/auth/oidc/oidctest"
)

// A CI job authenticates with its provider's OIDC token: a local issuer
// (its own keys, discovery document and JWKS on loopback) plays GitHub
// Actions. The job builds in the project whose trust policy its repository
// matches, and nothing else.
func TestOIDCTrustPolicies(t *testing.T) {
	t.Parallel()
	iss := oidctest.NewIssuer(t)
	const aud = "kiln-test"
	s := startServer(t, "--oidc-github-issuer", iss.URL, "--oidc-audience", aud, "--oidc-jwks-min-refresh", "200ms")
	projA := s.createProject(t, "oidc-a")
	projB := s.createProject(t, "oidc-b")
	ctx := t.Context()
	core := corev1connect.NewProjectServiceClient(http.DefaultClient, s.URL)

	// The administrator trusts acme/app in project A through Depot's API,
	// the way `depot` would, and sees it with kiln's CLI.
	added, err := core.AddTrustPolicy(ctx, bearer(&corev1.AddTrustPolicyRequest{ProjectId: projA,
		Provider: &corev1.AddTrustPolicyRequest_Github{Github: &corev1.TrustPolicy_GitHub{RepositoryOwner: "acme", Repository: "app"}}}, s.Token))
	if err != nil {
		t.Fatalf("AddTrustPolicy: %v", err)
	}
	policyID := added.Msg.TrustPolicy.GetTrustPolicyId()
	if policyID == "" || added.Msg.TrustPolicy.GetGithub().GetRepository() != "app" {
		t.Fatalf("AddTrustPolicy answered %v", added.Msg)
	}
	listed, err := core.ListTrustPolicies(ctx, bearer(&corev1.ListTrustPoliciesRequest{ProjectId: projA}, s.Token))
	if err != nil || len(listed.Msg.TrustPolicies) != 1 || listed.Msg.TrustPolicies[0].TrustPolicyId != policyID {
		t.Fatalf("ListTrustPolicies(A) = %v, %v", listed, err)
	}
	if out := s.mustKiln(t, t.TempDir(), "trust-policies", "list", "--project", projA).Stdout; !strings.Contains(out, policyID) || !strings.Contains(out, "github") || !strings.Contains(out, "acme/app") {
		t.Errorf("kiln trust-policies list:\n%s", out)
	}
	if l, err := core.ListTrustPolicies(ctx, bearer(&corev1.ListTrustPoliciesRequest{ProjectId: projB}, s.Token)); err != nil || len(l.Msg.TrustPolicies) != 0 {
		t.Errorf("ListTrustPolicies(B) = %v, %v; want none", l, err)
	}

	mint := func(k oidctest.Key, edit func(map[string]any)) string {
		c := oidctest.GitHubClaims(iss.URL, aud, "acme/app")
		if edit != nil {
			edit(c)
		}
		return oidctest.Sign(t, k, c)
	}
	jwt := mint(iss.Key(), nil)

	// With the job's token, a real `kiln build` in A succeeds.
	df := baseStages + "FROM busybox\nRUN echo built-by-ci > /proof\n"
	ctxDir := writeContext(t, map[string]string{"Dockerfile": df})
	dest := filepath.Join(t.TempDir(), "out")
	r := s.kiln(t, ctxDir, []string{"KILN_TOKEN=" + jwt}, "build", "--project", projA, "--progress", "plain", "-o", "type=local,dest="+dest, ".")
	if r.Err != nil {
		t.Fatalf("kiln build in A with the OIDC token: %v\n%s", r.Err, tail(r.Stderr, 6000))
	}
	if got, _ := os.ReadFile(filepath.Join(dest, "proof")); strings.TrimSpace(string(got)) != "built-by-ci" {
		t.Errorf("/proof = %q", got)
	}
	// ... and in B it is refused.
	r = s.kiln(t, ctxDir, []string{"KILN_TOKEN=" + jwt}, "build", "--project", projB, "--progress", "plain", "-o", "type=local,dest="+t.TempDir(), ".")
	if r.Err == nil {
		t.Fatalf("kiln build in B with A's OIDC token succeeded")
	}
	if strings.Contains(r.Stderr, "oidc-b") {
		t.Errorf("the refusal names project B:\n%s", r.Stderr)
	}
	_, err = s.api().CreateBuild(ctx, bearer(&cliv1.CreateBuildRequest{ProjectId: projB}, jwt))
	if code := connect.CodeOf(err); code != connect.CodeNotFound && code != connect.CodePermissionDenied {
		t.Errorf("CreateBuild in B: %v, want NotFound or PermissionDenied", err)
	}

	// It sees only A, and administers nothing.
	projects, err := core.ListProjects(ctx, bearer(&corev1.ListProjectsRequest{}, jwt))
	if err != nil || len(projects.Msg.Projects) != 1 || projects.Msg.Projects[0].ProjectId != projA {
		t.Errorf("ListProjects with the OIDC token = %v, %v; want only A", projects, err)
	}
	denied := map[string]error{}
	_, denied["CreateToken"] = core.CreateToken(ctx, bearer(&corev1.CreateTokenRequest{ProjectId: projA, Description: "ci"}, jwt))
	name := "renamed"
	_, denied["UpdateProject"] = core.UpdateProject(ctx, bearer(&corev1.UpdateProjectRequest{ProjectId: projA, Name: &name}, jwt))
	_, denied["DeleteProject"] = core.DeleteProject(ctx, bearer(&corev1.DeleteProjectRequest{ProjectId: projA}, jwt))
	_, denied["CreateProject"] = core.CreateProject(ctx, bearer(&corev1.CreateProjectRequest{Name: "ci-made"}, jwt))
	_, denied["AddTrustPolicy"] = core.AddTrustPolicy(ctx, bearer(&corev1.AddTrustPolicyRequest{ProjectId: projA,
		Provider: &corev1.AddTrustPolicyRequest_Github{Github: &corev1.TrustPolicy_GitHub{RepositoryOwner: "evil", Repository: "x"}}}, jwt))
	_, denied["RemoveTrustPolicy"] = core.RemoveTrustPolicy(ctx, bearer(&corev1.RemoveTrustPolicyRequest{ProjectId: projA, TrustPolicyId: policyID}, jwt))
	_, denied["ListTokens"] = core.ListTokens(ctx, bearer(&corev1.ListTokensRequest{ProjectId: projA}, jwt))
	for rpc, err := range denied {
		if code := connect.CodeOf(err); code != connect.CodePermissionDenied {
			t.Errorf("%s with the OIDC token: %v, want PermissionDenied", rpc, err)
		}
	}

	// Tokens that must not get in, each with the reason in the message.
	rogue := oidctest.NewIssuer(t)
	unpublished := iss.NewKey(t, "RS256")
	forged := unpublished
	forged.ID = iss.Key().ID
	for _, tc := range []struct {
		name  string
		token string
		code  connect.Code
		says  string
	}{
		{"another repository", mint(iss.Key(), func(c map[string]any) { c["repository"] = "acme/other" }), connect.CodePermissionDenied, "no trust policy matches GitHub repository acme/other"},
		{"wrong audience", mint(iss.Key(), func(c map[string]any) { c["aud"] = "kiln" }), connect.CodeUnauthenticated, "audience"},
		{"wrong issuer", oidctest.Sign(t, rogue.Key(), oidctest.GitHubClaims(rogue.URL, aud, "acme/app")), connect.CodeUnauthenticated, "issuer is not trusted"},
		{"expired", mint(iss.Key(), func(c map[string]any) { c["exp"] = time.Now().Add(-5 * time.Minute).Unix() }), connect.CodeUnauthenticated, "expired"},
		{"not yet valid", mint(iss.Key(), func(c map[string]any) { c["nbf"] = time.Now().Add(5 * time.Minute).Unix() }), connect.CodeUnauthenticated, "not valid yet"},
		{"bad signature", mint(forged, nil), connect.CodeUnauthenticated, "signature is invalid"},
		{"unknown key id", mint(unpublished, nil), connect.CodeUnauthenticated, "key id"},
		{"alg none", oidctest.Unsigned(map[string]any{"alg": "none", "kid": iss.Key().ID}, oidctest.GitHubClaims(iss.URL, aud, "acme/app"), []byte("x")), connect.CodeUnauthenticated, "algorithm"},
		{"garbage", "eyJhbGciOi.not-a.token", connect.CodeUnauthenticated, "malformed"},
	} {
		_, err := s.api().CreateBuild(ctx, bearer(&cliv1.CreateBuildRequest{ProjectId: projA}, tc.token))
		if code := connect.CodeOf(err); code != tc.code || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("%s: %v; want %v saying %q", tc.name, err, tc.code, tc.says)
		}
		if err != nil && strings.Contains(err.Error(), projA) {
			t.Errorf("%s: the refusal names a project: %v", tc.name, err)
		}
	}
	if n := rogue.JWKSFetches(); n != 0 {
		t.Errorf("kiln fetched the keys of an unconfigured issuer %d times", n)
	}
	// The CLI shows the reason too.
	expired := mint(iss.Key(), func(c map[string]any) { c["exp"] = time.Now().Add(-5 * time.Minute).Unix() })
	if r := s.kiln(t, t.TempDir(), []string{"KILN_TOKEN=" + expired}, "projects", "list"); r.Err == nil || !strings.Contains(r.Stderr, "expired") {
		t.Errorf("kiln projects list with an expired OIDC token: err %v, stderr %q", r.Err, r.Stderr)
	}

	// The issuer rotates its key: tokens of the new key work without a
	// restart, and once the old key is gone its tokens stop working.
	next := iss.NewKey(t, "ES256")
	iss.Publish(iss.Key(), next)
	time.Sleep(300 * time.Millisecond) // past --oidc-jwks-min-refresh since the last fetch
	fetches := iss.JWKSFetches()
	if id, _ := s.createBuild(t, projA, mint(next, nil)); id == "" {
		t.Fatal("no build id with the rotated-in key")
	}
	if iss.JWKSFetches() <= fetches {
		t.Errorf("the new key id did not cause a JWKS fetch")
	}
	old := iss.Key()
	iss.Publish(next)
	time.Sleep(300 * time.Millisecond)
	// A token naming a key kiln has not seen makes it refetch the set,
	// which no longer has the old key.
	stranger := iss.NewKey(t, "RS256")
	if _, err := s.api().CreateBuild(ctx, bearer(&cliv1.CreateBuildRequest{ProjectId: projA}, mint(stranger, nil))); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Errorf("unpublished key: %v", err)
	}
	_, err = s.api().CreateBuild(ctx, bearer(&cliv1.CreateBuildRequest{ProjectId: projA}, mint(old, nil)))
	if connect.CodeOf(err) != connect.CodeUnauthenticated || !strings.Contains(err.Error(), "key id") {
		t.Errorf("token of the retired key: %v, want Unauthenticated (unknown key id)", err)
	}
	if _, tok := s.createBuild(t, projA, mint(next, nil)); tok == "" {
		t.Error("no build token with the current key")
	}

	// Removing the policy locks the job out on its next request.
	if r := s.mustKiln(t, t.TempDir(), "trust-policies", "remove", "--project", projA, policyID); !strings.Contains(r.Stdout, policyID) {
		t.Errorf("remove printed %q", r.Stdout)
	}
	_, err = s.api().CreateBuild(ctx, bearer(&cliv1.CreateBuildRequest{ProjectId: projA}, mint(next, nil)))
	if connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Errorf("after removing the policy: %v, want PermissionDenied", err)
	}

	// The server log records matches and denials, and never a token.
	logText, _ := os.ReadFile(s.log)
	for _, want := range []string{"oidc.trust_policy_matched", "oidc.denied"} {
		if !strings.Contains(string(logText), want) {
			t.Errorf("server log lacks %q", want)
		}
	}
	if strings.Contains(string(logText), jwt) || strings.Contains(string(logText), strings.Split(jwt, ".")[2]) {
		t.Errorf("an OIDC token appears in the server log")
	}
}

// kiln trust-policies manages all four providers through kiln.v1, and
// refuses malformed input before or at the server.
func TestTrustPoliciesCLI(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	proj := s.createProject(t, "trusting")
	dir := t.TempDir()
	for _, args := range [][]string{
		{"--github", "acme/app"},
		{"--gitlab", "acme/backend/api"},
		{"--circleci", "6b1f3a4e-5c7d-4e8f-9a0b-1c2d3e4f5a6b/0c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f"},
		{"--buildkite", "acme/deploy"},
	} {
		s.mustKiln(t, dir, append([]string{"trust-policies", "add", "--project", proj}, args...)...)
	}
	// Adding one again changes nothing.
	s.mustKiln(t, dir, "trust-policies", "add", "--project", proj, "--github", "ACME/App")
	out := s.mustKiln(t, dir, "trust-policies", "list", "--project", proj).Stdout
	for _, want := range []string{"github", "acme/app", "gitlab", "acme/backend/api", "circleci", "6b1f3a4e-5c7d-4e8f-9a0b-1c2d3e4f5a6b/0c2d3e4f", "buildkite", "acme/deploy"} {
		if !strings.Contains(out, want) {
			t.Errorf("list lacks %q:\n%s", want, out)
		}
	}
	if n := strings.Count(out, "\n"); n != 5 {
		t.Errorf("list has %d lines, want a header and 4 policies:\n%s", n, out)
	}
	// Depot's API lists the three providers it knows.
	core := corev1connect.NewProjectServiceClient(http.DefaultClient, s.URL)
	l, err := core.ListTrustPolicies(t.Context(), bearer(&corev1.ListTrustPoliciesRequest{ProjectId: proj}, s.Token))
	if err != nil || len(l.Msg.TrustPolicies) != 3 {
		t.Errorf("depot ListTrustPolicies = %v, %v; want github, circleci, buildkite", l, err)
	}

	for _, args := range [][]string{
		{"--github", "acme"},
		{"--github", "acme/app", "--gitlab", "a/b"},
		{},
		{"--github", "acme/../x"},
		{"--github", "ac me/app"},
		{"--circleci", "not-a-uuid/also-not"},
		{"--gitlab", "group"},
		{"--buildkite", "acme/deploy/x"},
		{"--github", "acme/" + strings.Repeat("a", 200)},
	} {
		r := s.kiln(t, dir, nil, append([]string{"trust-policies", "add", "--project", proj}, args...)...)
		if r.Err == nil {
			t.Errorf("add %v succeeded", args)
		}
	}
	if r := s.kiln(t, dir, nil, "trust-policies", "remove", "--project", proj, "tp_nonexistent"); r.Err == nil || !strings.Contains(r.Stderr, "not found") {
		t.Errorf("remove of a missing policy: %v %s", r.Err, r.Stderr)
	}
	// A project token may not manage trust policies.
	tok, err := core.CreateToken(t.Context(), bearer(&corev1.CreateTokenRequest{ProjectId: proj, Description: "ci"}, s.Token))
	if err != nil {
		t.Fatal(err)
	}
	if r := s.kiln(t, dir, []string{"KILN_TOKEN=" + tok.Msg.Secret}, "trust-policies", "add", "--project", proj, "--github", "evil/app"); r.Err == nil {
		t.Errorf("a project token added a trust policy")
	}
	if r := s.mustKiln(t, dir, "trust-policies", "--help"); !strings.Contains(r.Stdout, "Examples:") || !strings.Contains(r.Stdout, "--oidc-audience") {
		t.Errorf("trust-policies --help:\n%s", r.Stdout)
	}
}
