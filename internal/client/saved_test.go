package client

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"connectrpc.com/connect"
	cliv1 "github.com/depot/depot-go/proto/depot/cli/v1"

	cliv1extra "github.com/kiln-dev/kiln/gen/depot/cli/v1"
)

func TestParseSavedArg(t *testing.T) {
	good := map[string]SavedArg{
		"abc123def456":                  {BuildID: "abc123def456"},
		"v1":                            {BuildID: "v1"}, // a build id, or else a tag (ResolveSaved)
		"v1.2.3":                        {Tag: "v1.2.3"},
		"proj1:v1":                      {ProjectID: "proj1", Tag: "v1"},
		":latest":                       {Tag: "latest"},
		"my-proj.x:Release":             {ProjectID: "my-proj.x", Tag: "Release"},
		"p:" + strings.Repeat("t", 128): {ProjectID: "p", Tag: strings.Repeat("t", 128)},
	}
	for in, want := range good {
		got, err := ParseSavedArg(in)
		if err != nil || got != want {
			t.Errorf("ParseSavedArg(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "a:b:c", "Proj:v1", "proj:", "proj:.x", "proj:-x", "p:" + strings.Repeat("t", 129),
		"127.0.0.1:7420/proj:v1", "proj@sha256:abc", "a b", "-x", ".x", "x\n", "p:t\x00", strings.Repeat("a", 301), "proj/sub:v1", "pro--j_:x"} {
		if got, err := ParseSavedArg(bad); err == nil {
			t.Errorf("ParseSavedArg(%q) = %+v, want an error", bad, got)
		}
	}
}

func TestRegistryHost(t *testing.T) {
	for in, want := range map[string]string{
		"http://127.0.0.1:7420":          "127.0.0.1:7420",
		"https://kiln.example.com/api":   "kiln.example.com",
		"http://0.0.0.0:7420":            "127.0.0.1:7420",
		"http://[::1]:7420":              "[::1]:7420",
		"https://kiln.example.com:8443/": "kiln.example.com:8443",
	} {
		if got, err := RegistryHost(in); err != nil || got != want {
			t.Errorf("RegistryHost(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "not a url", "/relative"} {
		if got, err := RegistryHost(bad); err == nil {
			t.Errorf("RegistryHost(%q) = %q", bad, got)
		}
	}
}

// fakePullServer answers GetPullInfo for build "b1" and GetPullToken for
// any project.
func fakePullServer(t *testing.T) Config {
	t.Helper()
	mux := http.NewServeMux()
	mux.Handle(pullInfoProcedure, connect.NewUnaryHandler(pullInfoProcedure,
		func(_ context.Context, r *connect.Request[cliv1extra.GetPullInfoRequest]) (*connect.Response[cliv1extra.GetPullInfoResponse], error) {
			if r.Header().Get("Authorization") != "Bearer tok" {
				return nil, connect.NewError(connect.CodeUnauthenticated, errors.New("bad token"))
			}
			if r.Msg.BuildId != "b1" {
				return nil, connect.NewError(connect.CodeNotFound, errors.New("build not found"))
			}
			return connect.NewResponse(&cliv1extra.GetPullInfoResponse{Reference: "reg.example:5000/p1:b1", Username: "x-token", Password: "pul1"}), nil
		}))
	const tokenProc = "/depot.cli.v1.BuildService/GetPullToken"
	mux.Handle(tokenProc, connect.NewUnaryHandler(tokenProc,
		func(_ context.Context, r *connect.Request[cliv1.GetPullTokenRequest]) (*connect.Response[cliv1.GetPullTokenResponse], error) {
			return connect.NewResponse(&cliv1.GetPullTokenResponse{Token: "pul-" + r.Msg.GetProjectId()}), nil
		}))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return Config{APIURL: srv.URL, Token: "tok"}
}

func TestResolveSaved(t *testing.T) {
	c := fakePullServer(t)
	host, _ := RegistryHost(c.APIURL)
	ctx := context.Background()
	current := func() (string, error) { return "cur", nil }
	none := func() (string, error) { return "", errors.New("no project") }

	img, err := c.ResolveSaved(ctx, SavedArg{BuildID: "b1"}, none)
	if err != nil || img.Ref != "reg.example:5000/p1:b1" || img.Password != "pul1" || img.BuildID != "b1" {
		t.Errorf("build id: %+v, %v", img, err)
	}
	img, err = c.ResolveSaved(ctx, SavedArg{ProjectID: "p2", Tag: "v1"}, none)
	if err != nil || img.Ref != host+"/p2:v1" || img.Password != "pul-p2" || img.BuildID != "" {
		t.Errorf("project:tag: %+v, %v", img, err)
	}
	img, err = c.ResolveSaved(ctx, SavedArg{Tag: "v1"}, current)
	if err != nil || img.Ref != host+"/cur:v1" {
		t.Errorf(":tag: %+v, %v", img, err)
	}
	// Not a build: a tag of the current project, said so in messages.
	img, err = c.ResolveSaved(ctx, SavedArg{BuildID: "v2"}, current)
	if err != nil || img.Ref != host+"/cur:v2" || !strings.Contains(img.What, "build or tag v2") || !strings.Contains(img.NotSaved(), "no build v2") {
		t.Errorf("bare tag: %+v, %v", img, err)
	}
	if _, err := c.ResolveSaved(ctx, SavedArg{BuildID: "nope"}, none); err == nil || !strings.Contains(err.Error(), "no build nope") {
		t.Errorf("unknown build, no project: %v", err)
	}
	if _, err := c.ResolveSaved(ctx, SavedArg{Tag: "v1"}, none); err == nil {
		t.Error(":tag without a project resolved")
	}
	bad := c
	bad.Token = "wrong"
	if _, err := bad.ResolveSaved(ctx, SavedArg{BuildID: "b1"}, current); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Errorf("bad token falls back or hides the error: %v", err)
	}
}
