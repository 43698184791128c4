package e2e

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"buf.build/gen/go/depot/api/connectrpc/go/depot/core/v1/corev1connect"
	corev1 "buf.build/gen/go/depot/api/protocolbuffers/go/depot/core/v1"
	"connectrpc.com/connect"
	cliv1 "github.com/depot/depot-go/proto/depot/cli/v1"
	bkclient "github.com/moby/buildkit/client"

	kilnv1 "github.com/kiln-dev/kiln/gen/kiln/v1"
	"github.com/kiln-dev/kiln/gen/kiln/v1/kilnv1connect"
	"github.com/kiln-dev/kiln/internal/auth/oidc/oidctest"
)

// Nothing a CI job obtains outlives it: its build token, its builder
// connection and certificate, the registry tokens it exchanged its OIDC
// token for, the pull tokens it (or its build) minted all stop working
// when the job's own token expires, when the administrator removes the
// trust policy that admitted it, and when the project is deleted.
func TestOIDCJobCredentialsEnd(t *testing.T) {
	t.Parallel()
	iss := oidctest.NewIssuer(t)
	const aud = "kiln-life"
	s := startServer(t, "--oidc-github-issuer", iss.URL, "--oidc-audience", aud)
	proj := s.createProject(t, "life")
	policyID := lifeTrust(t, s, proj, "acme", "app")
	job := func(exp time.Time) string {
		c := oidctest.GitHubClaims(iss.URL, aud, "acme/app")
		c["exp"] = exp.Unix()
		return oidctest.Sign(t, iss.Key(), c)
	}

	// Warm the project's builder with the administrator's token, so the
	// short-lived job below spends its life on credentials, not on a
	// builder's start.
	wid, wtok := s.createBuild(t, proj, s.Token)
	s.activeConnection(t, wid, wtok)
	lifeFinish(t, s, wid, wtok)

	// 1. The job's token expires: everything it obtained is refused.
	exp := time.Now().Add(40 * time.Second).Truncate(time.Second)
	short := job(exp)
	c := lifeObtain(t, s, proj, short)
	if c.pullExpires.IsZero() || c.pullExpires.After(exp) {
		t.Errorf("a pull token the job minted without a lifetime expires at %v; want no later than the job's token (%v)", c.pullExpires, exp)
	}
	if got := lifeJWTExpiry(t, c.regToken); got.After(exp) {
		t.Errorf("the job's registry token expires at %v, after the job's token (%v)", got, exp)
	}
	if time.Until(exp) < 3*time.Second {
		t.Fatalf("obtaining the credentials took until %v, too close to the job token's expiry %v to test anything", time.Now(), exp)
	}
	time.Sleep(time.Until(exp) + 1500*time.Millisecond)
	lifeRefused(t, s, proj, c, "after the job's token expired")
	// The verifier tolerates clock skew on the job's token itself, but a
	// token past its exp obtains nothing new.
	if _, err := s.api().CreateBuild(t.Context(), bearer(&cliv1.CreateBuildRequest{ProjectId: proj}, short)); err == nil {
		t.Errorf("an expired job token created a build")
	}
	if _, err := lifeTokens(s).CreateToken(t.Context(), bearer(&kilnv1.CreateTokenRequest{ProjectId: proj, Kind: kilnv1.TokenKind_TOKEN_KIND_PULL}, short)); err == nil {
		t.Errorf("an expired job token minted a pull token")
	}
	if code := registryTokenStatus(t, s, short, proj); code != http.StatusUnauthorized {
		t.Errorf("an expired job token got a registry token: %d, want 401", code)
	}

	// 2. The administrator removes the policy: the same, at once; and a
	// source build the job asked kiln to run is canceled too.
	long := job(time.Now().Add(5 * time.Minute))
	c = lifeObtain(t, s, proj, long)
	src := s.createSource(t, long, projectRef(proj), contextArchive(t, map[string]string{"Dockerfile": baseStages + "FROM busybox\nRUN sleep 3217\n"}))
	s.waitStepStarted(t, src.BuildId, "RUN sleep 3217")
	s.mustKiln(t, t.TempDir(), "trust-policies", "remove", "--project", proj, policyID)
	lifeRefused(t, s, proj, c, "after its trust policy was removed")
	if st := s.getSourceBuild(t, s.Token, src.BuildId).Status; st != kilnv1.BuildStatus_BUILD_STATUS_CANCELED {
		t.Errorf("the job's source build after its trust policy was removed: %v, want canceled", st)
	}
	eventually(t, 30*time.Second, "the job's source build's RUN process to end", func() bool { return len(processesNamed("sleep 3217")) == 0 })

	// 3. The administrator deletes the project: the same.
	gone := s.createProject(t, "life-gone")
	lifeTrust(t, s, gone, "acme", "app")
	jwt := job(time.Now().Add(5 * time.Minute))
	reg := lifeRegistryToken(t, s, jwt, gone)
	pull := lifeMintPull(t, s, gone, jwt)
	if code := lifeRegistry(t, s, "Bearer "+reg, "GET", "/v2/"+gone+"/app/tags/list"); code == http.StatusUnauthorized || code == http.StatusForbidden {
		t.Fatalf("control: the job's registry token answered %d before the project was deleted", code)
	}
	core := corev1connect.NewProjectServiceClient(http.DefaultClient, s.URL)
	if _, err := core.DeleteProject(t.Context(), bearer(&corev1.DeleteProjectRequest{ProjectId: gone}, s.Token)); err != nil {
		t.Fatalf("DeleteProject: %v", err)
	}
	if code := lifeRegistry(t, s, "Bearer "+reg, "GET", "/v2/"+gone+"/app/tags/list"); code != http.StatusUnauthorized {
		t.Errorf("the job's registry token after its project was deleted: %d, want 401", code)
	}
	if code := registryTokenStatus(t, s, pull, gone); code != http.StatusUnauthorized {
		t.Errorf("the job's pull token after its project was deleted: %d, want 401", code)
	}
}

// lifeCreds is everything a CI job obtains.
type lifeCreds struct {
	buildID, buildToken string
	conn                *cliv1.GetBuildKitConnectionResponse_ActiveConnection
	client              *bkclient.Client // open on the build's builder
	regToken            string           // a registry token (pull, push) for the job's OIDC token
	pullToken           string           // minted by the job, no lifetime asked
	pullExpires         time.Time
	buildPull           string // minted by the job's build token (GetPullToken)
}

// lifeObtain has a job with token jwt obtain every credential it can in
// proj, checking each works.
func lifeObtain(t *testing.T, s *server, proj, jwt string) lifeCreds {
	t.Helper()
	ctx := t.Context()
	var c lifeCreds
	c.buildID, c.buildToken = s.createBuild(t, proj, jwt)
	c.conn = s.activeConnection(t, c.buildID, c.buildToken)
	var err error
	if c.client, err = gatewayConn(t, ctx, c.conn); err != nil {
		t.Fatalf("control: the job's build certificate refused: %v", err)
	}
	t.Cleanup(func() { c.client.Close() })
	if err := listWorkers(ctx, c.client); err != nil {
		t.Fatalf("control: the job's builder connection: %v", err)
	}
	c.regToken = lifeRegistryToken(t, s, jwt, proj)
	repo := "/v2/" + proj + "/app"
	if code := lifeRegistry(t, s, "Bearer "+c.regToken, "POST", repo+"/blobs/uploads/"); code != http.StatusAccepted {
		t.Fatalf("control: the job's registry token starts no push: %d", code)
	}
	res, err := lifeTokens(s).CreateToken(ctx, bearer(&kilnv1.CreateTokenRequest{ProjectId: proj, Kind: kilnv1.TokenKind_TOKEN_KIND_PULL, Description: "deploy"}, jwt))
	if err != nil {
		t.Fatalf("control: the job mints no pull token: %v", err)
	}
	c.pullToken, c.pullExpires = res.Msg.Secret, res.Msg.GetExpiresAt().AsTime()
	if res.Msg.ExpiresAt == nil {
		c.pullExpires = time.Time{}
	}
	pr, err := s.api().GetPullToken(ctx, bearer(&cliv1.GetPullTokenRequest{BuildId: &c.buildID}, c.buildToken))
	if err != nil {
		t.Fatalf("control: the job's build token mints no pull token: %v", err)
	}
	c.buildPull = pr.Msg.Token
	for what, secret := range map[string]string{"build token": c.buildToken, "pull token": c.pullToken, "build's pull token": c.buildPull} {
		if code := registryTokenStatus(t, s, secret, proj); code != http.StatusOK {
			t.Fatalf("control: the job's %s gets no registry token: %d", what, code)
		}
		if code := lifeRegistry(t, s, lifeBasic(secret), "GET", repo+"/tags/list"); code == http.StatusUnauthorized || code == http.StatusForbidden {
			t.Fatalf("control: the job's %s cannot pull: %d", what, code)
		}
	}
	if code := lifeRegistry(t, s, lifeBasic(c.buildToken), "POST", repo+"/blobs/uploads/"); code != http.StatusAccepted {
		t.Fatalf("control: the job's build token starts no push: %d", code)
	}
	return c
}

// lifeRefused checks that every credential of c is refused, why being when.
func lifeRefused(t *testing.T, s *server, proj string, c lifeCreds, why string) {
	t.Helper()
	ctx := t.Context()
	repo := "/v2/" + proj + "/app"
	_, err := s.api().GetBuildKitConnection(ctx, bearer(&cliv1.GetBuildKitConnectionRequest{BuildId: c.buildID,
		Platform: cliv1.BuilderPlatform_BUILDER_PLATFORM_AMD64}, c.buildToken))
	if connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Errorf("%s: the job's build token asks for a builder: %v, want Unauthenticated", why, err)
	}
	if code := lifeRegistry(t, s, "Bearer "+c.regToken, "POST", repo+"/blobs/uploads/"); code != http.StatusUnauthorized {
		t.Errorf("%s: the job's registry token starts a push: %d, want 401", why, code)
	}
	if code := lifeRegistry(t, s, "Bearer "+c.regToken, "GET", repo+"/tags/list"); code != http.StatusUnauthorized {
		t.Errorf("%s: the job's registry token pulls: %d, want 401", why, code)
	}
	for what, secret := range map[string]string{"build token": c.buildToken, "pull token": c.pullToken, "build's pull token": c.buildPull} {
		if code := registryTokenStatus(t, s, secret, proj); code != http.StatusUnauthorized {
			t.Errorf("%s: the job's %s gets a registry token: %d, want 401", why, what, code)
		}
		if code := lifeRegistry(t, s, lifeBasic(secret), "GET", repo+"/tags/list"); code != http.StatusUnauthorized {
			t.Errorf("%s: the job's %s pulls: %d, want 401", why, what, code)
		}
	}
	// The builder connection: the open one is cut (the gateway rechecks
	// live connections, the reaper ends the build), a new one refused.
	eventually(t, 45*time.Second, "the job's builder connection cut "+why, func() bool {
		return listWorkers(ctx, c.client) != nil
	})
	if c2, err := gatewayConn(t, ctx, c.conn); err == nil {
		if listWorkers(ctx, c2) == nil {
			t.Errorf("%s: the job's build certificate opens a new builder connection", why)
		}
		c2.Close()
	}
	eventually(t, 45*time.Second, "the job's build canceled "+why, func() bool {
		return s.buildStatus(t, proj, c.buildID) == cliv1.BuildStatus_BUILD_STATUS_CANCELED
	})
}

// lifeTrust adds a GitHub trust policy for owner/repo to proj.
func lifeTrust(t *testing.T, s *server, proj, owner, repo string) string {
	t.Helper()
	core := corev1connect.NewProjectServiceClient(http.DefaultClient, s.URL)
	res, err := core.AddTrustPolicy(t.Context(), bearer(&corev1.AddTrustPolicyRequest{ProjectId: proj,
		Provider: &corev1.AddTrustPolicyRequest_Github{Github: &corev1.TrustPolicy_GitHub{RepositoryOwner: owner, Repository: repo}}}, s.Token))
	if err != nil {
		t.Fatalf("AddTrustPolicy: %v", err)
	}
	return res.Msg.TrustPolicy.GetTrustPolicyId()
}

func lifeTokens(s *server) kilnv1connect.TokenServiceClient {
	return kilnv1connect.NewTokenServiceClient(http.DefaultClient, s.URL)
}

// lifeMintPull has the job with jwt mint a pull token of proj.
func lifeMintPull(t *testing.T, s *server, proj, jwt string) string {
	t.Helper()
	res, err := lifeTokens(s).CreateToken(t.Context(), bearer(&kilnv1.CreateTokenRequest{ProjectId: proj, Kind: kilnv1.TokenKind_TOKEN_KIND_PULL}, jwt))
	if err != nil {
		t.Fatalf("the job mints no pull token: %v", err)
	}
	return res.Msg.Secret
}

// lifeFinish ends a build successfully with its build token.
func lifeFinish(t *testing.T, s *server, id, tok string) {
	t.Helper()
	if _, err := s.api().FinishBuild(t.Context(), bearer(&cliv1.FinishBuildRequest{BuildId: id,
		Result: &cliv1.FinishBuildRequest_Success{Success: &cliv1.FinishBuildRequest_BuildSuccess{}}}, tok)); err != nil {
		t.Fatalf("FinishBuild: %v", err)
	}
}

// lifeRegistryToken exchanges secret (here a job's OIDC token) for a
// registry token granting pull and push in proj/app.
func lifeRegistryToken(t *testing.T, s *server, secret, proj string) string {
	t.Helper()
	req, _ := http.NewRequest("GET", s.URL+"/v2/token?service=kiln&scope=repository:"+proj+"/app:pull,push", nil)
	req.SetBasicAuth("x-token", secret)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var body struct {
		Token string `json:"token"`
	}
	if err := json.NewDecoder(res.Body).Decode(&body); err != nil || res.StatusCode != http.StatusOK || body.Token == "" {
		t.Fatalf("registry token for the job: %d, %v", res.StatusCode, err)
	}
	return body.Token
}

// lifeRegistry sends one registry request with an Authorization header and
// returns the status.
func lifeRegistry(t *testing.T, s *server, authorization, method, path string) int {
	t.Helper()
	req, _ := http.NewRequest(method, s.URL+path, nil)
	req.Header.Set("Authorization", authorization)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	return res.StatusCode
}

func lifeBasic(secret string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte("x-token:"+secret))
}

// lifeJWTExpiry reads a JWT's exp without verifying it.
func lifeJWTExpiry(t *testing.T, raw string) time.Time {
	t.Helper()
	parts := strings.Split(raw, ".")
	if len(parts) != 3 {
		t.Fatalf("not a JWT: %q", raw)
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	var claims struct {
		Exp int64 `json:"exp"`
	}
	if err != nil || json.Unmarshal(b, &claims) != nil || claims.Exp == 0 {
		t.Fatalf("JWT without exp: %v", err)
	}
	return time.Unix(claims.Exp, 0)
}
