package e2e

import (
	"encoding/base64"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/depot/depot-go/machine"
	cliv1 "github.com/depot/depot-go/proto/depot/cli/v1"
	"github.com/docker/cli/cli/config/configfile"
	"github.com/docker/cli/cli/config/types"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/api/types/registry"
	dockerclient "github.com/docker/docker/client"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/moby/buildkit/client"
	"github.com/moby/buildkit/session"
	"github.com/moby/buildkit/session/auth/authprovider"
	"github.com/tonistiigi/fsutil"

	"github.com/kiln-dev/kiln/internal/depotext"
)

// The depot CLI's `--load` against kiln, RPC for RPC: kiln answers
// CreateBuild with registry.load_using_registry, so the CLI saves the build
// to kiln's registry (the additional tags, with the lent build token),
// pulls it into Docker with GetPullInfo's reference and credentials, and
// tags it with the user's tag — no fast path through Depot's BuildKit
// fork, no rebuild. Once with a context directory, once as `depot build -
// < Dockerfile` sends it (a Dockerfile and an empty context), which the
// CLI cannot retry by rebuilding, and once as a bake target.
func TestDepotLoadThroughRegistry(t *testing.T) {
	t.Parallel()
	s := sharedServer(t)
	s.requireRegistry(t)
	d := startDockerd(t)
	proj := s.createProject(t, "depot-load")
	host := s.registryHost()

	ctxDir := writeContext(t, map[string]string{"Dockerfile": saveDockerfile})
	first := s.depotLoad(t, d, proj, "", "loaded:ctx", ctxDir, ctxDir)
	if out, err := d.docker(t, "run", "--rm", "--network", "none", "loaded:ctx", "cat", "/file"); err != nil || strings.TrimSpace(out) != "saved-by-kiln" {
		t.Errorf("docker run loaded:ctx cat /file = %q, %v", out, err)
	}

	// stdin: the Dockerfile alone, an empty context; its base is the image
	// the first build saved, pulled by the builder with the build token.
	dfDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dfDir, "Dockerfile"), []byte("FROM "+host+"/"+proj+":"+first+"\nENV LOADED_FROM=stdin\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	s.depotLoad(t, d, proj, "", "loaded:stdin", t.TempDir(), dfDir)
	out, err := d.docker(t, "image", "inspect", "--format", "{{json .Config.Env}}", "loaded:stdin")
	if err != nil || !strings.Contains(out, "LOADED_FROM=stdin") {
		t.Errorf("docker image inspect loaded:stdin: %v %s", err, out)
	}
	if out, err := d.docker(t, "run", "--rm", "--network", "none", "loaded:stdin", "cat", "/file"); err != nil || strings.TrimSpace(out) != "saved-by-kiln" {
		t.Errorf("docker run loaded:stdin cat /file = %q, %v", out, err)
	}

	// GetPullInfo's credential reads its build's image and nothing else of
	// the project: not another build's, not the tag list.
	info, err := s.pullInfo(t, first, s.Token)
	if err != nil {
		t.Fatal(err)
	}
	cred := remote.WithAuth(&authn.Basic{Username: info.Username, Password: info.Password})
	if _, err := remote.Get(mpRef(t, info.Reference), cred); err != nil {
		t.Errorf("read %s with its GetPullInfo credential: %v", info.Reference, err)
	}
	second := s.latestBuild(t, proj)
	if _, err := remote.Get(mpRef(t, host+"/"+proj+":"+second), cred); registryStatus(err) != http.StatusForbidden {
		t.Errorf("read another build's image with build %s's pull credential: %v, want 403", first, err)
	}
	repo, _ := name.NewRepository(host + "/" + proj)
	if _, err := remote.List(repo, cred); registryStatus(err) != http.StatusForbidden {
		t.Errorf("list the project's tags with a build's pull credential: %v, want 403", err)
	}

	// depot bake --load: the target's image is pushed and pulled as
	// <reference>-<target>, which the build's pull credential reads.
	s.depotLoad(t, d, proj, "app", "loaded:bake", ctxDir, ctxDir)
	if out, err := d.docker(t, "run", "--rm", "--network", "none", "loaded:bake", "cat", "/file"); err != nil || strings.TrimSpace(out) != "saved-by-kiln" {
		t.Errorf("docker run loaded:bake cat /file = %q, %v", out, err)
	}

	// kiln's own CLI prints the build's URL with its id.
	r := s.mustKiln(t, ctxDir, "build", "--project", proj, "--progress", "plain", ".")
	if id := buildIDOf(t, r); !strings.Contains(r.Stderr, "kiln: build "+id+" in project "+proj+" ("+s.URL+"/builds/"+id+")\n") {
		t.Errorf("kiln build does not print the build's URL:\n%s", tail(r.Stderr, 2000))
	}

	// Without --load kiln asks for no registry load and lends nothing.
	res, err := s.api().CreateBuild(t.Context(), bearer(&cliv1.CreateBuildRequest{ProjectId: proj,
		Options: []*cliv1.BuildOptions{{Command: cliv1.Command_COMMAND_BUILD}}}, s.Token))
	if err != nil {
		t.Fatal(err)
	}
	if depotext.LoadUsingRegistry(res.Msg.Registry) || len(res.Msg.AdditionalTags) > 0 || len(res.Msg.AdditionalCredentials) > 0 {
		t.Errorf("a build without --load: load_using_registry=%v, additional tags %v", depotext.LoadUsingRegistry(res.Msg.Registry), res.Msg.AdditionalTags)
	}
	s.api().FinishBuild(t.Context(), bearer(&cliv1.FinishBuildRequest{BuildId: res.Msg.BuildId,
		Result: &cliv1.FinishBuildRequest_Success{Success: &cliv1.FinishBuildRequest_BuildSuccess{}}}, res.Msg.BuildToken))
}

// depotLoad runs `depot build --load -t tag` as the depot CLI does it and
// returns the build id: CreateBuild (load=true), GetPullInfo with the
// user's token, GetBuildKitConnection, a solve whose image export pushes
// to the additional tags with the lent credential, FinishBuild, then
// `docker pull` of GetPullInfo's reference with its credentials and a tag
// with the user's tag.
//
// With a bake target the options say BAKE and name the target, and the CLI
// appends "-<target>" to the tag it pushes and to the reference it pulls.
func (s *server) depotLoad(t *testing.T, d *dockerd, proj, target, tag, contextDir, dockerfileDir string) string {
	t.Helper()
	ctx := t.Context()
	host := s.registryHost()
	opts := &cliv1.BuildOptions{Command: cliv1.Command_COMMAND_BUILD, Tags: []string{tag}, Load: true}
	suffix := ""
	if target != "" {
		opts.Command, opts.TargetName, suffix = cliv1.Command_COMMAND_BAKE, &target, "-"+target
	}
	res, err := s.api().CreateBuild(ctx, bearer(&cliv1.CreateBuildRequest{ProjectId: proj, Options: []*cliv1.BuildOptions{opts}}, s.Token))
	if err != nil {
		t.Fatalf("CreateBuild --load: %v", err)
	}
	id, buildToken := res.Msg.BuildId, res.Msg.BuildToken
	if !depotext.LoadUsingRegistry(res.Msg.Registry) {
		t.Fatalf("CreateBuild --load: registry.load_using_registry is false")
	}
	ref := host + "/" + proj + ":" + id
	if len(res.Msg.AdditionalTags) != 1 || res.Msg.AdditionalTags[0].Tag != ref || !res.Msg.AdditionalTags[0].Push {
		t.Fatalf("CreateBuild --load: additional tags %v, want [%s push]", res.Msg.AdditionalTags, ref)
	}
	if len(res.Msg.AdditionalCredentials) != 1 || res.Msg.AdditionalCredentials[0].Host != host {
		t.Fatalf("CreateBuild --load: additional credentials for %v, want %s", res.Msg.AdditionalCredentials, host)
	}
	cred, err := base64.StdEncoding.DecodeString(res.Msg.AdditionalCredentials[0].Token)
	user, pass, _ := strings.Cut(string(cred), ":")
	if err != nil || user != "x-token" || pass != buildToken {
		t.Fatalf("CreateBuild --load: the credential is not x-token:<build token>")
	}
	if !strings.HasPrefix(res.Msg.BuildUrl, s.URL+"/builds/"+id) {
		t.Errorf("CreateBuild build_url = %q, want %s/builds/%s", res.Msg.BuildUrl, s.URL, id)
	}

	// The CLI asks for the pull info right away, with the user's token.
	info, err := s.pullInfo(t, id, s.Token)
	if err != nil {
		t.Fatalf("GetPullInfo: %v", err)
	}
	if info.Reference != ref || info.Username != "x-token" || !strings.HasPrefix(info.Password, "kiln_pul_") || !info.SaveForLoad {
		t.Fatalf("GetPullInfo = %s %s %.9s… save_for_load=%v", info.Reference, info.Username, info.Password, info.SaveForLoad)
	}

	active := s.activeConnection(t, id, buildToken)
	m := &machine.Machine{BuildID: id, Token: buildToken, Addr: active.Endpoint, ServerName: active.ServerName,
		Cert: active.Cert.GetCert(), Key: active.Cert.GetKey(), CACert: active.CaCert.GetCert()}
	c, err := m.Connect(ctx)
	if err != nil {
		t.Fatalf("connect to the builder: %v", err)
	}
	defer c.Close()
	ctxFS, err := fsutil.NewFS(contextDir)
	if err != nil {
		t.Fatal(err)
	}
	dfFS, err := fsutil.NewFS(dockerfileDir)
	if err != nil {
		t.Fatal(err)
	}
	cfg := configfile.New("")
	cfg.AuthConfigs[host] = types.AuthConfig{Username: user, Password: pass}
	// As the CLI with save on and no --push: the image export is named by
	// the additional tags only, and pushed.
	_, solveErr := c.Solve(ctx, nil, client.SolveOpt{
		Frontend:    "dockerfile.v0",
		LocalMounts: map[string]fsutil.FS{"context": ctxFS, "dockerfile": dfFS},
		Exports: []client.ExportEntry{{Type: client.ExporterImage, Attrs: map[string]string{
			"name": ref + suffix, "push": "true", "oci-mediatypes": "true"}}},
		Session: []session.Attachable{authprovider.NewDockerAuthProvider(authprovider.DockerAuthProviderConfig{
			AuthConfigProvider: authprovider.LoadAuthConfig(cfg)})},
	}, nil)
	finish := &cliv1.FinishBuildRequest{BuildId: id, Result: &cliv1.FinishBuildRequest_Success{Success: &cliv1.FinishBuildRequest_BuildSuccess{}}}
	if solveErr != nil {
		finish.Result = &cliv1.FinishBuildRequest_Error{Error: &cliv1.FinishBuildRequest_BuildError{Error: solveErr.Error()}}
	}
	// The CLI pulls before it finishes the build; the pull credential does
	// not depend on the build running, so the order does not matter here.
	if _, err := s.api().FinishBuild(ctx, bearer(finish, buildToken)); err != nil {
		t.Errorf("FinishBuild: %v", err)
	}
	if solveErr != nil {
		t.Fatalf("solve: %v", solveErr)
	}

	// As the CLI pulls: through the Docker API, the credential in
	// X-Registry-Auth with the server address it hard-codes
	// (registry.depot.dev), which the engine does not hold against
	// kiln's host; then the user's tag on the pulled image.
	pull := info.Reference + suffix
	dc, err := dockerclient.NewClientWithOpts(dockerclient.WithHost(d.Host), dockerclient.WithAPIVersionNegotiation())
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	regAuth, err := registry.EncodeAuthConfig(registry.AuthConfig{Username: info.Username, Password: info.Password, ServerAddress: "registry.depot.dev"})
	if err != nil {
		t.Fatal(err)
	}
	rc, err := dc.ImagePull(ctx, pull, image.PullOptions{RegistryAuth: regAuth})
	if err != nil {
		t.Fatalf("pull %s through the Docker API: %v", pull, err)
	}
	progress, _ := io.ReadAll(rc)
	rc.Close()
	if strings.Contains(string(progress), `"error"`) {
		t.Fatalf("pull %s through the Docker API:\n%s", pull, progress)
	}
	if err := dc.ImageTag(ctx, pull, tag); err != nil {
		t.Fatalf("tag %s as %s: %v", pull, tag, err)
	}
	if out, err := d.docker(t, "image", "inspect", "--format", "{{.Id}}", tag); err != nil || !strings.HasPrefix(strings.TrimSpace(out), "sha256:") {
		t.Fatalf("docker image inspect %s: %v %s", tag, err, out)
	}
	return id
}
