package e2e

import (
	"net/http"
	"strings"
	"testing"

	"buf.build/gen/go/depot/api/connectrpc/go/depot/core/v1/corev1connect"
	corev1 "buf.build/gen/go/depot/api/protocolbuffers/go/depot/core/v1"
	"connectrpc.com/connect"
)

// The same port answers Connect (JSON and protobuf) over HTTP/1.1 and gRPC
// and gRPC-Web over h2c, as the depot CLI (h2c) and curl users expect.
func TestProtocolsOnOnePort(t *testing.T) {
	t.Parallel()
	s := sharedServer(t)
	proj := s.createProject(t, "protocols")
	h2c := &http.Client{Transport: &http.Transport{Protocols: func() *http.Protocols {
		p := new(http.Protocols)
		p.SetUnencryptedHTTP2(true)
		return p
	}()}}
	for name, c := range map[string]corev1connect.ProjectServiceClient{
		"connect+proto/http1": corev1connect.NewProjectServiceClient(http.DefaultClient, s.URL),
		"connect+json/http1":  corev1connect.NewProjectServiceClient(http.DefaultClient, s.URL, connect.WithProtoJSON()),
		"grpc/h2c":            corev1connect.NewProjectServiceClient(h2c, s.URL, connect.WithGRPC()),
		"grpc-web/http1":      corev1connect.NewProjectServiceClient(http.DefaultClient, s.URL, connect.WithGRPCWeb()),
		"connect/h2c":         corev1connect.NewProjectServiceClient(h2c, s.URL),
	} {
		res, err := c.GetProject(t.Context(), bearer(&corev1.GetProjectRequest{ProjectId: proj}, s.Token))
		if err != nil || res.Msg.Project.GetName() != "protocols" {
			t.Errorf("%s: GetProject = %v, %v", name, res, err)
		}
		_, err = c.GetProject(t.Context(), bearer(&corev1.GetProjectRequest{ProjectId: "nope"}, s.Token))
		if connect.CodeOf(err) != connect.CodeNotFound {
			t.Errorf("%s: unknown project: %v, want NotFound", name, err)
		}
	}
}

// The project commands, login and version as a user runs them.
func TestProjectsAndLoginCLI(t *testing.T) {
	t.Parallel()
	s := sharedServer(t)
	dir := t.TempDir()
	id := s.createProject(t, "cli-project")
	if r := s.mustKiln(t, dir, "projects", "list"); !strings.Contains(r.Stdout, id) || !strings.Contains(r.Stdout, "cli-project") {
		t.Errorf("projects list:\n%s", r.Stdout)
	}
	if r := s.mustKiln(t, dir, "projects", "update", id, "--name", "renamed", "--keep-gb", "7"); !strings.Contains(r.Stdout, "renamed") || !strings.Contains(r.Stdout, "7") {
		t.Errorf("projects update:\n%s", r.Stdout)
	}
	if r := s.mustKiln(t, dir, "projects", "get", id, "--json"); !strings.Contains(r.Stdout, `"renamed"`) {
		t.Errorf("projects get --json:\n%s", r.Stdout)
	}
	s.mustKiln(t, dir, "projects", "delete", id)
	if r := s.kiln(t, dir, nil, "projects", "get", id); r.Err == nil || !strings.Contains(r.Stderr, "not found") {
		t.Errorf("get after delete: %v %s", r.Err, r.Stderr)
	}
	if r := s.kiln(t, dir, nil, "projects", "create", ""); r.Err == nil || !strings.Contains(r.Stderr, "name") {
		t.Errorf("empty name: %v %s", r.Err, r.Stderr)
	}

	// login saves the URL and token; later commands need neither.
	home := t.TempDir()
	env := []string{"HOME=" + home, "XDG_CONFIG_HOME=" + home + "/.config"}
	r := s.kiln(t, dir, append(env, "KILN_TOKEN=", "KILN_API_URL="), "login", "--api-url", s.URL, "--token", s.Token)
	if r.Err != nil {
		t.Fatalf("login: %v %s", r.Err, r.Stderr)
	}
	if r := s.kiln(t, dir, append(env, "KILN_TOKEN=", "KILN_API_URL="), "projects", "list"); r.Err != nil {
		t.Errorf("projects list after login: %v %s", r.Err, r.Stderr)
	}
	if r := s.kiln(t, dir, append(env, "KILN_TOKEN=", "KILN_API_URL="), "login", "--api-url", s.URL, "--token", "kiln_org_wrong"); r.Err == nil {
		t.Errorf("login with a bad token succeeded")
	}
	if r := s.mustKiln(t, dir, "version"); !strings.HasPrefix(r.Stdout, "kiln ") {
		t.Errorf("version: %q", r.Stdout)
	}
	for _, cmd := range [][]string{{"--help"}, {"build", "--help"}, {"serve", "--help"}, {"projects", "--help"}, {"login", "--help"}} {
		if r := s.mustKiln(t, dir, cmd...); !strings.Contains(r.Stdout, "Examples:") {
			t.Errorf("kiln %v has no examples:\n%s", cmd, r.Stdout)
		}
	}
}
