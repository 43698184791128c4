package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
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
