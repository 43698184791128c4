package e2e

import (
	"context"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/handlers"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/inmemory" // registers "inmemory"
	"github.com/sirupsen/logrus"
)

// startRegistry serves an OCI registry (distribution, in memory) on a
// loopback port for the length of the test and returns its host:port.
func startRegistry(t *testing.T) string {
	t.Helper()
	cfg := &configuration.Configuration{Storage: configuration.Storage{"inmemory": configuration.Parameters{}, "delete": configuration.Parameters{"enabled": true}}}
	cfg.Log.Level = "error"
	cfg.HTTP.Secret = "kiln-e2e"
	logrus.SetLevel(logrus.WarnLevel) // distribution logs every request at info
	app := handlers.NewApp(context.Background(), cfg)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: app, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}

// dockerd is a Docker engine the test started, with its own data root and
// socket; DOCKER_HOST=Host reaches it.
type dockerd struct {
	Host string
	dir  string
}

// startDockerd runs Debian's dockerd for the test (no bridge, no iptables:
// tests use `docker run --network none`). It fails the test if dockerd is
// not installed: end-to-end tests never skip for a missing component.
func startDockerd(t *testing.T) *dockerd {
	t.Helper()
	bin, err := exec.LookPath("dockerd")
	if err != nil {
		t.Fatalf("dockerd is required (apt-get install docker.io): %v", err)
	}
	dir, err := os.MkdirTemp("", "kiln-dockerd-")
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "docker.sock")
	ns := "kiln-e2e-" + filepath.Base(dir)
	cmd := exec.Command(bin, "--data-root", filepath.Join(dir, "data"), "--exec-root", filepath.Join(dir, "exec"),
		"--host", "unix://"+sock, "--pidfile", filepath.Join(dir, "docker.pid"),
		"--bridge=none", "--iptables=false", "--ip6tables=false",
		"--containerd-namespace", ns, "--containerd-plugins-namespace", ns+"-plugins")
	logf, _ := os.Create(filepath.Join(dir, "dockerd.log"))
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d := &dockerd{Host: "unix://" + sock, dir: dir}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		}
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(dir, "dockerd.log"))
			t.Logf("dockerd log:\n%s", tail(string(b), 6000))
		}
		exec.Command("umount", "-R", filepath.Join(dir, "data")).Run()
		os.RemoveAll(dir)
	})
	deadline := time.Now().Add(60 * time.Second)
	for {
		if out, err := d.docker(t, "version", "--format", "{{.Server.Version}}"); err == nil && strings.TrimSpace(out) != "" {
			return d
		}
		select {
		case <-exited:
			b, _ := os.ReadFile(filepath.Join(dir, "dockerd.log"))
			t.Fatalf("dockerd exited at start:\n%s", tail(string(b), 4000))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("dockerd did not answer within 60s")
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// docker runs the Docker CLI against d.
func (d *dockerd) docker(t *testing.T, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "docker", args...)
	cmd.Env = append(os.Environ(), "DOCKER_HOST="+d.Host, "DOCKER_CONFIG="+filepath.Join(d.dir, "cli"))
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// Smoke test of the harness itself: both come up and answer.
func TestInfraHarness(t *testing.T) {
	t.Parallel()
	reg := startRegistry(t)
	res, err := http.Get("http://" + reg + "/v2/")
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("registry /v2/: %v %v", res, err)
	}
	d := startDockerd(t)
	if out, err := d.docker(t, "info", "--format", "{{.ServerVersion}}"); err != nil {
		t.Fatalf("docker info: %v %s", err, out)
	}
}
