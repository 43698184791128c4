package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"buf.build/gen/go/depot/api/connectrpc/go/depot/buildkit/v1/buildkitv1connect"
	buildkitv1 "buf.build/gen/go/depot/api/protocolbuffers/go/depot/buildkit/v1"
	"connectrpc.com/connect"

	cliv1extra "github.com/kiln-dev/kiln/gen/depot/cli/v1"
	cliv1beta1 "github.com/kiln-dev/kiln/gen/depot/cli/v1beta1"
	"github.com/kiln-dev/kiln/gen/depot/cli/v1beta1/cliv1beta1connect"
)

// rawJSON calls a unary Connect procedure with a JSON body and returns the
// HTTP status and the decoded body.
func rawJSON(t *testing.T, s *server, token, procedure string, body any) (int, map[string]any) {
	t.Helper()
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest("POST", s.URL+"/"+procedure, bytes.NewReader(b))
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s: %v", procedure, err)
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	out := map[string]any{}
	json.Unmarshal(raw, &out)
	return res.StatusCode, out
}

// Every RPC of Depot's wire schema (../shared/DEPOT_API.md) either works or
// answers Unimplemented on purpose (README's compatibility table). Unary
// RPCs are called with raw JSON as Depot's API docs show; streaming ones
// through generated clients.
func TestEveryDepotRPC(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	proj := s.createProject(t, "compat")
	scratch := s.createProject(t, "compat-scratch")
	buildID, buildTok := s.createBuild(t, proj, s.Token)
	admin := s.Token

	var tokenID, policyID, pushID string
	unimplemented := "unimplemented"
	calls := []struct {
		procedure string
		token     string
		body      any
		want      string               // "" = success; else the Connect code
		after     func(map[string]any) // reads ids out of a success
	}{
		{"depot.cli.v1beta1.LoginService/StartLogin", "", map[string]any{}, "", nil},
		{"depot.cli.v1beta1.ProjectsService/ListProjects", admin, map[string]any{}, "", nil},
		{"depot.core.v1.OrganizationService/ListOrganizations", admin, map[string]any{}, "", nil},
		{"depot.cli.v1.BuildService/GetBuild", buildTok, map[string]any{"buildId": buildID}, "", nil},
		{"depot.cli.v1.BuildService/GetBuildKitConnection", buildTok, map[string]any{"buildId": buildID, "platform": "BUILDER_PLATFORM_AMD64"}, "", nil},
		{"depot.cli.v1.BuildService/ReportBuildHealth", buildTok, map[string]any{"buildId": buildID, "platform": "BUILDER_PLATFORM_AMD64"}, "", nil},
		{"depot.cli.v1.BuildService/ReportTimings", buildTok, map[string]any{"buildId": buildID,
			"buildSteps": []any{map[string]any{"name": "[stage 1/1] RUN true", "durationMs": 5, "startTime": time.Now().UTC().Format(time.RFC3339), "stableDigest": "sha256:aa"}}}, "", nil},
		{"depot.cli.v1.BuildService/ReportStatus", buildTok, map[string]any{"buildId": buildID, "statuses": []any{map[string]any{
			"vertexes": []any{map[string]any{"digest": "sha256:bb", "name": "[stage 1/1] RUN echo hi"}},
			"logs":     []any{map[string]any{"vertex": "sha256:bb", "msg": "aGkK"}}}}}, "", nil},
		{"depot.cli.v1.BuildService/ReportBuildContext", buildTok, map[string]any{"buildId": buildID,
			"dockerfiles": []any{map[string]any{"filename": "Dockerfile", "contents": "FROM scratch\n"}}}, "", nil},
		{"depot.cli.v1.BuildService/ListBuilds", admin, map[string]any{"projectId": proj}, "", nil},
		{"depot.cli.v1.BuildService/GetPullInfo", buildTok, map[string]any{"buildId": buildID}, "", nil},
		{"depot.cli.v1.BuildService/GetPullToken", admin, map[string]any{"projectId": proj}, "", nil},
		{"depot.cli.v1.PushService/StartPush", buildTok, map[string]any{"buildId": buildID, "tag": "registry.example.com/app:1"}, "",
			func(m map[string]any) { pushID, _ = m["pushId"].(string) }},
		{"depot.cli.v1.PushService/FinishPush", buildTok, map[string]any{"buildId": buildID, "pushId": &pushID}, "", nil},
		{"depot.core.v1.UsageService/ListProjectUsage", admin, map[string]any{}, "", nil},
		{"depot.core.v1.UsageService/GetProjectUsage", admin, map[string]any{"projectId": proj}, "", nil},
		{"depot.core.v1.UsageService/GetUsage", admin, map[string]any{}, "", nil},
		{"depot.buildkit.v1.BuildKitService/ReleaseEndpoint", buildTok, map[string]any{"buildId": buildID, "platform": "PLATFORM_AMD64"}, "", nil},
		{"depot.build.v1.BuildService/GetBuildSteps", admin, map[string]any{"projectId": proj, "buildId": buildID}, "", nil},
		{"depot.build.v1.BuildService/GetBuildStepLogs", admin, map[string]any{"projectId": proj, "buildId": buildID, "buildStepDigest": "sha256:bb"}, "", nil},
		{"depot.build.v1.RegistryService/ListImages", admin, map[string]any{"projectId": proj}, "", nil},
		{"depot.build.v1.RegistryService/DeleteImage", admin, map[string]any{"projectId": proj, "imageTags": []string{"x"}}, "", nil},
		{"depot.core.v1.BuildService/ListBuilds", admin, map[string]any{"projectId": proj}, "", nil},
		{"depot.core.v1.BuildService/GetBuild", admin, map[string]any{"buildId": buildID}, "", nil},
		{"depot.core.v1.BuildService/ShareBuild", admin, map[string]any{"buildId": buildID}, "", nil},
		{"depot.core.v1.BuildService/StopSharingBuild", admin, map[string]any{"buildId": buildID}, "", nil},
		{"depot.core.v1.ProjectService/ListProjects", admin, map[string]any{}, "", nil},
		{"depot.core.v1.ProjectService/GetProject", admin, map[string]any{"projectId": proj}, "", nil},
		{"depot.core.v1.ProjectService/CreateProject", admin, map[string]any{"name": "compat-created"}, "", nil},
		{"depot.core.v1.ProjectService/UpdateProject", admin, map[string]any{"projectId": proj, "name": "compat-renamed"}, "", nil},
		{"depot.core.v1.ProjectService/ResetProject", admin, map[string]any{"projectId": scratch}, "", nil},
		{"depot.core.v1.ProjectService/AddTrustPolicy", admin, map[string]any{"projectId": proj, "github": map[string]any{"repositoryOwner": "acme", "repository": "app"}}, "",
			func(m map[string]any) { policyID, _ = m["trustPolicy"].(map[string]any)["trustPolicyId"].(string) }},
		{"depot.core.v1.ProjectService/ListTrustPolicies", admin, map[string]any{"projectId": proj}, "", nil},
		{"depot.core.v1.ProjectService/RemoveTrustPolicy", admin, map[string]any{"projectId": proj, "trustPolicyId": &policyID}, "", nil},
		{"depot.core.v1.ProjectService/CreateToken", admin, map[string]any{"projectId": proj, "description": "compat"}, "",
			func(m map[string]any) { tokenID, _ = m["tokenId"].(string) }},
		{"depot.core.v1.ProjectService/ListTokens", admin, map[string]any{"projectId": proj}, "", nil},
		{"depot.core.v1.ProjectService/UpdateToken", admin, map[string]any{"tokenId": &tokenID, "description": "renamed"}, "", nil},
		{"depot.core.v1.ProjectService/DeleteToken", admin, map[string]any{"tokenId": &tokenID}, "", nil},
		{"depot.cli.v1beta1.ProjectsService/ResetProjectCache", admin, map[string]any{"projectId": scratch}, "", nil},
		{"depot.core.v1.ProjectService/DeleteProject", admin, map[string]any{"projectId": scratch}, "", nil},
		{"depot.build.v1.BuildService/CreateBuild", admin, map[string]any{"projectId": proj}, "", nil},
		{"depot.cli.v1.BuildService/CreateBuild", admin, map[string]any{"projectId": proj}, "", nil},
		{"depot.cli.v1.BuildService/FinishBuild", buildTok, map[string]any{"buildId": buildID, "success": map[string]any{}}, "", nil},
	}
	for _, c := range calls {
		status, body := rawJSON(t, s, c.token, c.procedure, c.body)
		got := ""
		if status != 200 {
			got, _ = body["code"].(string)
			if got == "" {
				got = fmt.Sprintf("http %d", status)
			}
		}
		if got != c.want {
			t.Errorf("%s: got %q (%v), want %q", c.procedure, got, body, orOK(c.want))
			continue
		}
		if c.want == unimplemented && !strings.Contains(fmt.Sprint(body["message"]), "not") {
			t.Errorf("%s: Unimplemented without saying why: %v", c.procedure, body)
		}
		if c.after != nil {
			c.after(body)
		}
	}

	// Streaming RPCs through generated clients.
	ctx := t.Context()
	login := cliv1beta1connect.NewLoginServiceClient(http.DefaultClient, s.URL)
	stream, err := login.FinishLogin(ctx, connect.NewRequest(&cliv1beta1.FinishLoginRequest{Id: "no-such-login"}))
	if err == nil {
		for stream.Receive() {
		}
		err = stream.Err()
	}
	if connect.CodeOf(err) != connect.CodeNotFound {
		t.Errorf("FinishLogin(unknown): %v, want NotFound", err)
	}

	b2, tok2 := s.createBuild(t, proj, admin)
	bk := buildkitv1connect.NewBuildKitServiceClient(http.DefaultClient, s.URL)
	ep, err := bk.GetEndpoint(ctx, bearer(&buildkitv1.GetEndpointRequest{BuildId: b2, Platform: buildkitv1.Platform_PLATFORM_AMD64}, tok2))
	if err != nil {
		t.Fatalf("GetEndpoint: %v", err)
	}
	var active *buildkitv1.GetEndpointResponse_ActiveConnection
	for ep.Receive() {
		if a := ep.Msg().GetActive(); a != nil {
			active = a
		}
	}
	if err := ep.Err(); err != nil || active == nil || !strings.HasPrefix(active.Endpoint, "tcp://127.0.0.1:") || active.Cert.GetKey().GetKey() == "" {
		t.Errorf("GetEndpoint stream: active=%v err=%v", active, err)
	}
	hs := bk.ReportHealth(ctx)
	hs.RequestHeader().Set("Authorization", "Bearer "+tok2)
	for i := 0; i < 3; i++ {
		hs.Send(&buildkitv1.ReportHealthRequest{BuildId: b2, Platform: buildkitv1.Platform_PLATFORM_AMD64})
	}
	if _, err := hs.CloseAndReceive(); err != nil {
		t.Errorf("ReportHealth stream: %v", err)
	}

	rs := connect.NewClient[cliv1extra.ReportStatusStreamRequest, cliv1extra.ReportStatusStreamResponse](http.DefaultClient,
		s.URL+"/depot.cli.v1.BuildService/ReportStatusStream").CallClientStream(ctx)
	rs.RequestHeader().Set("Authorization", "Bearer "+tok2)
	rs.Send(&cliv1extra.ReportStatusStreamRequest{BuildId: b2})
	if _, err := rs.CloseAndReceive(); err != nil {
		t.Errorf("ReportStatusStream: %v", err)
	}
	// ... and a build token streaming into another build is refused.
	rs = connect.NewClient[cliv1extra.ReportStatusStreamRequest, cliv1extra.ReportStatusStreamResponse](http.DefaultClient,
		s.URL+"/depot.cli.v1.BuildService/ReportStatusStream").CallClientStream(ctx)
	rs.RequestHeader().Set("Authorization", "Bearer "+tok2)
	rs.Send(&cliv1extra.ReportStatusStreamRequest{BuildId: buildID})
	if _, err := rs.CloseAndReceive(); connect.CodeOf(err) != connect.CodeNotFound {
		t.Errorf("ReportStatusStream into another build: %v, want NotFound (as for a missing build)", err)
	}
}

func orOK(code string) string {
	if code == "" {
		return "success"
	}
	return code
}
