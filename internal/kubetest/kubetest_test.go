package kubetest_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/kubetest"
	"github.com/kiln-dev/kiln/internal/testenv"
)

func TestMain(m *testing.M) {
	code := m.Run()
	kubetest.Stop()
	os.Exit(code)
}

// A busybox pod runs on the cluster and its output reads back.
func TestPodRuns(t *testing.T) {
	c := kubetest.Start(t)
	ns := namespace(t, c, "kubetest-pod")
	c.Apply(t, `apiVersion: v1
kind: Pod
metadata: {name: hello, namespace: `+ns+`}
spec:
  restartPolicy: Never
  containers:
  - {name: c, image: localhost/kiln/busybox:1, imagePullPolicy: Never, command: [sh, -c, "echo hello from $(hostname)"]}
`)
	c.Kubectl(t, "wait", "-n", ns, "--for=jsonpath={.status.phase}=Succeeded", "pod/hello", "--timeout=90s")
	if got := strings.TrimSpace(c.Kubectl(t, "logs", "-n", ns, "hello")); got != "hello from hello" {
		t.Fatalf("pod log = %q, want %q", got, "hello from hello")
	}
}

// The builder image's contract with kiln's Kubernetes driver: ENTRYPOINT is
// buildkitd and takes all its arguments from the pod; privileged, it
// answers on its --addr from the host and runs a build with a RUN step.
func TestBuilderImage(t *testing.T) {
	c := kubetest.Start(t)
	buildctl := testenv.Bin(t, "buildctl")
	ns := namespace(t, c, "kubetest-builder")
	c.Apply(t, `apiVersion: v1
kind: Pod
metadata: {name: builder, namespace: `+ns+`}
spec:
  terminationGracePeriodSeconds: 5
  containers:
  - name: buildkitd
    image: `+c.BuilderImage+`
    imagePullPolicy: Never
    args: [--addr, "tcp://0.0.0.0:1234", --root, /var/lib/buildkit]
    securityContext: {privileged: true}
    volumeMounts: [{name: state, mountPath: /var/lib/buildkit}]
  volumes: [{name: state, emptyDir: {}}]
`)
	c.Kubectl(t, "wait", "-n", ns, "--for=jsonpath={.spec.nodeName}", "pod/builder", "--timeout=60s")
	scheduled := time.Now()
	c.Kubectl(t, "wait", "-n", ns, "--for=jsonpath={.status.podIP}", "pod/builder", "--timeout=60s")
	addr := "tcp://" + strings.TrimSpace(c.Kubectl(t, "get", "pod", "-n", ns, "builder", "-o", "jsonpath={.status.podIP}")) + ":1234"
	var out []byte
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		var err error
		out, err = exec.CommandContext(ctx, buildctl, "--addr", addr, "debug", "workers").CombinedOutput()
		cancel()
		if err == nil {
			break
		}
		if time.Since(scheduled) > 90*time.Second {
			t.Fatalf("buildkitd in the builder pod did not answer at %s within 90s: %v: %s\n%s", addr, err, out,
				c.Kubectl(t, "logs", "-n", ns, "builder", "--tail=20"))
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("builder pod cold start: scheduled -> buildkitd answering at %s in %.1fs", addr, time.Since(scheduled).Seconds())
	if !strings.Contains(string(out), "linux/amd64") {
		t.Errorf("buildctl debug workers: no linux/amd64 worker:\n%s", out)
	}

	// No registry is reachable from the pod: the base is a static busybox
	// from the context (FROM scratch), and the RUN step runs it.
	dir := t.TempDir()
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		testenv.Missing(t, "/bin/busybox: apt-get install busybox-static")
	}
	write(t, filepath.Join(dir, "busybox"), string(bb), 0o755)
	write(t, filepath.Join(dir, "Dockerfile"), "FROM scratch\nCOPY busybox /bin/busybox\n"+
		`RUN ["/bin/busybox", "sh", "-c", "/bin/busybox echo ran-in-pod > /proof"]`+"\n", 0o644)
	outDir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	build := exec.CommandContext(ctx, buildctl, "--addr", addr, "build", "--frontend", "dockerfile.v0",
		"--local", "context="+dir, "--local", "dockerfile="+dir, "--output", "type=local,dest="+outDir)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("buildctl build on the builder pod: %v\n%s", err, out)
	}
	if got, err := os.ReadFile(filepath.Join(outDir, "proof")); err != nil || strings.TrimSpace(string(got)) != "ran-in-pod" {
		t.Fatalf("/proof from the RUN step = %q, %v; want ran-in-pod", got, err)
	}
}

// namespace creates a namespace for the test, deleted (without waiting)
// when it ends, and waits for its default service account.
func namespace(t *testing.T, c *kubetest.Cluster, name string) string {
	t.Helper()
	c.Kubectl(t, "create", "namespace", name)
	t.Cleanup(func() { c.Kubectl(t, "delete", "namespace", name, "--wait=false") })
	c.Kubectl(t, "wait", "-n", name, "--for=create", "serviceaccount/default", "--timeout=30s")
	return name
}

func write(t *testing.T, p, content string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
}
