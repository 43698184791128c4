package e2e

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"
)

// The Compose CLI plugins the test builds (Debian 12 ships only the Python
// docker-compose 1.29, which does not build through buildx): the current
// major version and the v2 line most installations run.
var (
	composeV5 = composeBuild{"github.com/docker/compose/v5", "v5.6.0", "tools/compose/go.mod", "docker-compose"}
	composeV2 = composeBuild{"github.com/docker/compose/v2", "v2.40.3", "tools/compose/v2/go.mod", "docker-compose-v2"}
)

// composeBuild is a Compose version pinned in its own module file.
type composeBuild struct{ module, version, modfile, bin string }

// build compiles Compose into bin/. go build leaves an up-to-date binary
// alone, so this links only when the binary is missing or the pin (or Go)
// changed: under a second once built; on a fresh 2-core machine about
// 100 s (v5) and 160 s (v2) of CPU, less where kiln was built first.
func (c composeBuild) build(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(repoRoot, "bin", c.bin)
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	start := time.Now()
	cmd := exec.CommandContext(ctx, "go", "build", "-modfile="+c.modfile, "-trimpath",
		"-ldflags=-X "+c.module+"/internal.Version="+c.version, "-o", bin, c.module+"/cmd")
	cmd.Dir = repoRoot
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build Docker Compose %s (%s): %v\n%s", c.version, c.modfile, err, out)
	}
	t.Logf("Docker Compose %s built in %s", c.version, time.Since(start).Round(time.Millisecond))
	return bin
}

// dirState is what a user would compare before and after: every entry of
// a directory with its bytes (or link target) and mode.
func dirState(t *testing.T, dir string) string {
	t.Helper()
	var lines []string
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		switch {
		case fi.Mode()&os.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			lines = append(lines, fmt.Sprintf("%s -> %s", rel, target))
		case fi.IsDir():
			lines = append(lines, fmt.Sprintf("%s/ %v", rel, fi.Mode()))
		default:
			b, _ := os.ReadFile(p)
			lines = append(lines, fmt.Sprintf("%s %v %x", rel, fi.Mode(), sha256.Sum256(b)))
		}
		return nil
	})
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

var kilnBuildLine = regexp.MustCompile(`build ([a-z0-9]+) in project ([a-z0-9]+)`)

// After kiln configure-docker, a user's plain `docker build` and `docker
// compose build` build on kiln (their builds are the project's, and the
// images land in the user's Docker engine), and --uninstall leaves the
// Docker config directory exactly as it was.
func TestConfigureDocker(t *testing.T) {
	t.Parallel()
	docker, err := exec.LookPath("docker")
	if err != nil {
		t.Fatalf("the Docker CLI is required (apt-get install docker.io): %v", err)
	}
	compose, composeOld := composeV5.build(t), composeV2.build(t)
	s := sharedServer(t)
	proj := s.createProject(t, "configure-docker")
	d := startDockerd(t)

	// A user's Docker config: settings of their own, Compose installed as
	// a plugin, and another buildx (here a script) that kiln must put back.
	home := t.TempDir()
	cfgDir := filepath.Join(home, ".docker")
	plugins := filepath.Join(cfgDir, "cli-plugins")
	os.MkdirAll(plugins, 0o755)
	config := "{\n  \"auths\": {\"registry.invalid\": {\"auth\": \"eDp5\"}},\n  \"detachKeys\": \"ctrl-e,e\",\n  \"psFormat\": \"table {{.ID}}\"\n}\n"
	if err := os.WriteFile(filepath.Join(cfgDir, "config.json"), []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	os.Symlink(compose, filepath.Join(plugins, "docker-compose"))
	otherBuildx := "#!/bin/sh\nif [ \"$1\" = docker-cli-plugin-metadata ]; then echo '{\"SchemaVersion\":\"0.1.0\",\"Vendor\":\"test\",\"Version\":\"v0.17.0\"}'; exit 0; fi\necho other-buildx \"$@\"\n"
	os.WriteFile(filepath.Join(plugins, "docker-buildx"), []byte(otherBuildx), 0o755)
	before := dirState(t, cfgDir)

	env := []string{"HOME=" + home, "DOCKER_CONFIG=" + cfgDir, "DOCKER_HOST=" + d.Host}
	// The user's environment, without settings that would choose for them
	// (Compose v2 refuses an empty COMPOSE_BAKE, so they are left out).
	var dockerEnv []string
	for _, e := range os.Environ() {
		switch k, _, _ := strings.Cut(e, "="); k {
		case "KILN_PROJECT_ID", "DEPOT_PROJECT_ID", "DEPOT_TOKEN", "DOCKER_BUILDKIT", "BUILDX_BUILDER", "COMPOSE_BAKE", "DOCKER_CONTEXT":
		default:
			dockerEnv = append(dockerEnv, e)
		}
	}
	dockerEnv = append(dockerEnv, append(env, "KILN_API_URL="+s.URL, "KILN_TOKEN="+s.Token)...)
	run := func(dir, bin string, args ...string) (string, error) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, bin, args...)
		cmd.Dir, cmd.Env = dir, dockerEnv
		b, err := cmd.CombinedOutput()
		return string(b), err
	}
	builds := func() string {
		t.Helper()
		return s.mustKiln(t, t.TempDir(), "builds", "list", "--project", proj, "--limit", "100").Stdout
	}

	if r := s.kiln(t, home, env, "configure-docker", "--help"); !strings.Contains(r.Stdout, "Examples:") || !strings.Contains(r.Stdout, "docker compose build") {
		t.Errorf("configure-docker --help has no examples:\n%s", r.Stdout)
	}
	r := s.kiln(t, home, env, "configure-docker")
	if r.Err != nil {
		t.Fatalf("configure-docker: %v\n%s%s", r.Err, r.Stdout, r.Stderr)
	}
	t.Logf("configure-docker:\n%s", r.Stdout)
	if b, _ := os.ReadFile(filepath.Join(cfgDir, "config.json")); !strings.Contains(string(b), `"registry.invalid"`) || !strings.Contains(string(b), `"psFormat"`) {
		t.Errorf("configure-docker lost the user's settings:\n%s", b)
	}
	// buildx commands kiln does not do go to the buildx that was there.
	if out, err := run(home, docker, "buildx", "ls"); err != nil || !strings.Contains(out, "other-buildx") {
		t.Errorf("docker buildx ls after configure-docker: %v\n%s", err, out)
	}

	// Plain docker build, with every Docker CLI on the machine (Debian's
	// 20.10 needs the builder alias; later ones pick buildx by default).
	ctxDir := writeContext(t, map[string]string{
		"kiln.json":  `{"id": "` + proj + `"}`,
		"Dockerfile": baseStages + "FROM busybox AS web\nRUN echo web > /proof\nFROM busybox AS worker\nRUN echo worker > /proof\nFROM web\n",
		"compose.yaml": `name: kilnc
services:
  web:
    build: {context: ., target: web}
  worker:
    build: {context: ., target: worker}
`,
	})
	clis := []string{docker}
	if other, err := filepath.EvalSymlinks("/usr/bin/docker"); err == nil {
		if p, _ := filepath.EvalSymlinks(docker); p != other {
			clis = append(clis, other)
		}
	}
	for i, cli := range clis {
		tag := fmt.Sprintf("plain%d:latest", i)
		out, err := run(ctxDir, cli, "build", "-t", tag, "--progress", "plain", ".")
		if err != nil {
			t.Fatalf("%s build: %v\n%s", cli, err, tail(out, 4000))
		}
		v, _ := run(ctxDir, cli, "version", "--format", "{{.Client.Version}}")
		t.Logf("docker build with the Docker CLI %s (%s):\n%s", cli, strings.TrimSpace(v), tail(out, 1500))
		m := kilnBuildLine.FindStringSubmatch(out)
		if !strings.Contains(out, "[kiln]") || m == nil || m[2] != proj {
			t.Fatalf("%s build does not say it ran on kiln in project %s:\n%s", cli, proj, tail(out, 4000))
		}
		if list := builds(); !strings.Contains(list, m[1]) {
			t.Errorf("%s build's kiln build %s is not in kiln builds list:\n%s", cli, m[1], list)
		}
		if got, err := d.docker(t, "run", "--rm", "--network", "none", tag, "cat", "/proof"); err != nil || strings.TrimSpace(got) != "web" {
			t.Errorf("%s build loaded no image %s into Docker: %v %q", cli, tag, err, got)
		}
	}

	// Outside a kiln project, docker build says it now runs on kiln and how
	// to undo that.
	if out, err := run(t.TempDir(), docker, "build", "-t", "x", "."); err == nil || !strings.Contains(out, "needs a kiln project") || !strings.Contains(out, "kiln configure-docker --uninstall") {
		t.Errorf("docker build outside a project: %v\n%s", err, out)
	}

	// docker buildx build, with an output of its own: no --load.
	out, err := run(ctxDir, docker, "buildx", "build", "--progress", "plain", "--target", "worker", "-o", "type=local,dest=out", ".")
	if err != nil || !strings.Contains(out, "[kiln]") {
		t.Fatalf("docker buildx build: %v\n%s", err, tail(out, 4000))
	}
	if b, _ := os.ReadFile(filepath.Join(ctxDir, "out", "proof")); string(b) != "worker\n" {
		t.Errorf("docker buildx build -o type=local: /proof = %q", b)
	}

	// docker compose build: both services, one kiln build, the images in
	// Docker; through every Docker CLI (20.10 runs the Compose plugin
	// differently from 23 and later).
	// And Compose v2, run standalone (docker-compose build): it finds
	// buildx in the same plugin directory.
	composeRuns := [][]string{{composeOld, "-p", "kilncv2", "build"}}
	for i, cli := range clis {
		composeRuns = append(composeRuns, []string{cli, "compose", "-p", fmt.Sprintf("kilnc%d", i), "build"})
	}
	for _, c := range composeRuns {
		name := c[len(c)-2]
		out, err := run(ctxDir, c[0], c[1:]...)
		if err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(c, " "), err, tail(out, 6000))
		}
		t.Logf("%s:\n%s", strings.Join(c, " "), tail(out, 3000))
		cli := c[0]
		m := kilnBuildLine.FindStringSubmatch(out)
		if !strings.Contains(out, "[kiln]") || m == nil || m[2] != proj {
			t.Fatalf("%s compose build does not say it ran on kiln in project %s:\n%s", cli, proj, tail(out, 6000))
		}
		if list := builds(); !strings.Contains(list, m[1]) {
			t.Errorf("compose's kiln build %s is not in kiln builds list:\n%s", m[1], list)
		}
		for _, svc := range []string{"web", "worker"} {
			if got, err := d.docker(t, "run", "--rm", "--network", "none", name+"-"+svc, "cat", "/proof"); err != nil || strings.TrimSpace(got) != svc {
				t.Errorf("%s compose service %s: image %s-%s in Docker: %v %q", cli, svc, name, svc, err, got)
			}
		}
	}

	if r := s.kiln(t, home, env, "configure-docker", "--uninstall"); r.Err != nil {
		t.Fatalf("configure-docker --uninstall: %v\n%s%s", r.Err, r.Stdout, r.Stderr)
	} else {
		t.Logf("configure-docker --uninstall:\n%s", r.Stdout)
	}
	if b, _ := os.ReadFile(filepath.Join(cfgDir, "config.json")); string(b) != config {
		t.Errorf("config.json after --uninstall:\n%s\nwant, byte for byte:\n%s", b, config)
	}
	if after := dirState(t, cfgDir); after != before {
		t.Errorf("the Docker config directory after --uninstall:\n%s\nbefore:\n%s", after, before)
	}

	// A config.json that is not JSON: a clear error, and nothing changes.
	bad := filepath.Join(t.TempDir(), ".docker")
	os.MkdirAll(bad, 0o755)
	os.WriteFile(filepath.Join(bad, "config.json"), []byte(`{"auths": {`), 0o600)
	badBefore := dirState(t, bad)
	r = s.kiln(t, home, []string{"DOCKER_CONFIG=" + bad}, "configure-docker")
	if r.Err == nil || !strings.Contains(r.Stderr, filepath.Join(bad, "config.json")) || !strings.Contains(r.Stderr, "not a valid") {
		t.Errorf("configure-docker with a broken config.json: %v\n%s%s", r.Err, r.Stdout, r.Stderr)
	}
	if after := dirState(t, bad); after != badBefore {
		t.Errorf("configure-docker changed a broken config dir:\n%s\nbefore:\n%s", after, badBefore)
	}
}
