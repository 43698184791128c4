package e2e

import (
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// kiln configure-docker makes `docker kiln build` a real kiln build, and
// --uninstall takes it away again.
func TestDockerCLIPlugin(t *testing.T) {
	t.Parallel()
	docker, err := exec.LookPath("docker")
	if err != nil {
		t.Fatalf("the Docker CLI is required (apt-get install docker.io): %v", err)
	}
	s := sharedServer(t)
	proj := s.createProject(t, "docker-plugin")
	home := t.TempDir()
	env := []string{"HOME=" + home, "DOCKER_CONFIG=" + filepath.Join(home, ".docker")}
	if r := s.kiln(t, home, env, "configure-docker"); r.Err != nil || !strings.Contains(r.Stdout, "docker-kiln") {
		t.Fatalf("configure-docker: %v\n%s%s", r.Err, r.Stdout, r.Stderr)
	}
	ctxDir := writeContext(t, map[string]string{"Dockerfile": baseStages + "FROM busybox\nRUN echo via-docker > /proof\n"})
	out := t.TempDir()
	cmd := exec.Command(docker, "kiln", "build", "--project", proj, "--progress", "plain", "-o", "type=local,dest="+out, ".")
	cmd.Dir = ctxDir
	cmd.Env = append(os.Environ(), append(env, "KILN_API_URL="+s.URL, "KILN_TOKEN="+s.Token)...)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("docker kiln build: %v\n%s", err, tail(string(b), 3000))
	}
	if b, _ := os.ReadFile(filepath.Join(out, "proof")); string(b) != "via-docker\n" {
		t.Errorf("docker kiln build output /proof = %q", b)
	}
	if r := s.kiln(t, home, env, "configure-docker", "--uninstall"); r.Err != nil {
		t.Fatalf("uninstall: %v %s", r.Err, r.Stderr)
	}
	cmd = exec.Command(docker, "kiln", "version")
	cmd.Env = append(os.Environ(), env...)
	if b, err := cmd.CombinedOutput(); err == nil {
		t.Errorf("docker kiln still works after --uninstall: %s", b)
	}
	// A foreign plugin of the same name is left alone.
	os.MkdirAll(filepath.Join(home, ".docker", "cli-plugins"), 0o755)
	os.WriteFile(filepath.Join(home, ".docker", "cli-plugins", "docker-kiln"), []byte("#!/bin/sh\n"), 0o755)
	if r := s.kiln(t, home, env, "configure-docker"); r.Err == nil || !strings.Contains(r.Stderr, "not kiln's") {
		t.Errorf("configure-docker over a foreign plugin: %v %s", r.Err, r.Stderr)
	}
}

// kiln doctor reports each check with what to do; the setup's buildkitd and
// runc pass its security floors.
func TestDoctor(t *testing.T) {
	t.Parallel()
	s := sharedServer(t)
	r := s.kiln(t, t.TempDir(), []string{"KILN_BUILDKITD=" + buildkitd, "KILN_DATA=" + s.Data}, "doctor")
	for _, want := range []string{"buildkitd", "runc", "overlayfs", "binfmt", "disk", "server", s.URL + " is up"} {
		if !strings.Contains(r.Stdout, want) {
			t.Errorf("doctor output lacks %q:\n%s", want, r.Stdout)
		}
	}
	// It checks the runc builders use, the one beside buildkitd (setup's
	// bin/runc, at the floor and built with seccomp), not Debian's on PATH.
	runc := filepath.Join(filepath.Dir(buildkitd), "runc")
	if !strings.Contains(r.Stdout, runc) || !strings.Contains(r.Stdout, "libseccomp") {
		t.Errorf("doctor does not report %s with its seccomp support:\n%s", runc, r.Stdout)
	}
	for _, line := range strings.Split(r.Stdout, "\n") {
		for _, name := range []string{"buildkitd", "runc"} {
			if strings.HasPrefix(line, "[WARN] "+name+" ") {
				t.Errorf("doctor flags the setup's %s: %s", name, line)
			}
		}
	}
	if r.Err != nil && !strings.Contains(r.Stdout, "FAIL") {
		t.Errorf("doctor failed without a FAIL line: %v\n%s", r.Err, r.Stdout)
	}
	// A server that is not there is a failure with advice.
	r = s.kiln(t, t.TempDir(), []string{"KILN_API_URL=http://127.0.0.1:1", "KILN_BUILDKITD=" + buildkitd}, "doctor")
	if r.Err == nil || !strings.Contains(r.Stdout, "kiln serve") {
		t.Errorf("doctor with no server: err=%v\n%s", r.Err, r.Stdout)
	}
}

// Real clients authenticate with no special flags: the Docker CLI (docker
// login, push, pull, run against a private dockerd), and BuildKit pushing
// a build with the user's Docker credentials.
//
// The longest test of the package (dockerd retries the denied push for
// about 50 s): it lives in this early file because parallel tests start
// roughly in source order, so it starts early instead of ending the run.
func TestRegistryDockerAndBuildKitClients(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	proj := s.createProject(t, "clients")
	d := startDockerd(t)
	host := strings.TrimPrefix(s.URL, "http://")

	// An image for Docker to push: busybox, made locally.
	tarPath := filepath.Join(t.TempDir(), "img.tar")
	img, err := random.Image(1024, 1)
	if err != nil {
		t.Fatal(err)
	}
	tag, _ := name.NewTag("local/random:1")
	if err := tarball.WriteToFile(tarPath, tag, img); err != nil {
		t.Fatal(err)
	}
	mustDocker := func(args ...string) string {
		t.Helper()
		out, err := d.docker(t, args...)
		if err != nil {
			t.Fatalf("docker %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	mustDocker("load", "-i", tarPath)
	ref := host + "/" + proj + "/random:1"
	mustDocker("tag", "local/random:1", ref)
	if out, err := d.docker(t, "push", ref); err == nil {
		t.Errorf("docker push without login succeeded:\n%s", out)
	}
	if out, err := d.docker(t, "login", "-u", "x-token", "--password-stdin", host); err == nil {
		t.Errorf("docker login with no password succeeded: %s", out)
	}
	login := func(token string) {
		t.Helper()
		out, err := dockerShell(t, d, fmt.Sprintf("echo %s | docker login -u x-token --password-stdin %s", token, host))
		if err != nil {
			t.Fatalf("docker login: %v\n%s", err, out)
		}
	}
	login(s.Token)
	mustDocker("push", ref)
	mustDocker("rmi", ref, "local/random:1")
	mustDocker("pull", ref)
	want, _ := img.Digest()
	if out := mustDocker("image", "inspect", "--format", "{{.ID}}", ref); !strings.Contains(out, mustConfigDigest(t, img)) {
		t.Errorf("pulled image id %s, pushed config %s (manifest %s)", out, mustConfigDigest(t, img), want)
	}
	// Another project's token: docker login works, the push is refused.
	other := s.createProject(t, "clients-other")
	dir := t.TempDir()
	tokOther := strings.TrimSpace(s.mustKiln(t, dir, "tokens", "create", "--project", other).Stdout)
	login(tokOther)
	if out, err := d.docker(t, "push", ref); err == nil || !(strings.Contains(out, "denied") || strings.Contains(out, "unauthorized")) {
		t.Errorf("docker push into another project: %v\n%s", err, out)
	}

	// BuildKit (kiln build --push) pushes to kiln's registry with the
	// user's Docker credentials: an index with its provenance attestation.
	dockerConfig := t.TempDir()
	auth := base64.StdEncoding.EncodeToString([]byte("x-token:" + s.Token))
	os.WriteFile(filepath.Join(dockerConfig, "config.json"), []byte(`{"auths":{"`+host+`":{"auth":"`+auth+`"}}}`), 0o600)
	ctxDir := writeContext(t, map[string]string{"Dockerfile": baseStages + "FROM busybox\nRUN echo built > /file\n"})
	built := host + "/" + proj + "/built:1"
	r := s.kiln(t, ctxDir, []string{"DOCKER_CONFIG=" + dockerConfig}, "build", "--project", proj, "-t", built, "--push", "--progress", "plain", ".")
	if r.Err != nil {
		t.Fatalf("kiln build --push to kiln's registry: %v\n%s", r.Err, tail(r.Stderr, 6000))
	}
	bref, _ := name.ParseReference(built, name.Insecure)
	desc, err := remote.Get(bref, remote.WithAuth(&authn.Basic{Username: "x-token", Password: s.Token}))
	if err != nil || !desc.MediaType.IsIndex() {
		t.Fatalf("the pushed build: %v %v", desc, err)
	}
	login(s.Token)
	mustDocker("pull", built)
	if out := mustDocker("run", "--rm", "--network", "none", built, "cat", "/file"); strings.TrimSpace(out) != "built" {
		t.Errorf("docker run the built image: %q", out)
	}
	// It is listed by Depot's RegistryService.
	list := httpJSON(t, s, "depot.build.v1.RegistryService/ListImages", s.Token, map[string]any{"projectId": proj})
	if !strings.Contains(list, `"tag":"built:1"`) || !strings.Contains(list, `"tag":"random:1"`) {
		t.Errorf("ListImages = %s", list)
	}
	if r := httpJSON(t, s, "depot.build.v1.RegistryService/DeleteImage", s.Token, map[string]any{"projectId": proj, "imageTags": []string{"random:1"}}); r != "{}" {
		t.Errorf("DeleteImage = %s", r)
	}
	if list := httpJSON(t, s, "depot.build.v1.RegistryService/ListImages", s.Token, map[string]any{"projectId": proj}); strings.Contains(list, "random:1") {
		t.Errorf("ListImages after DeleteImage = %s", list)
	}
}
