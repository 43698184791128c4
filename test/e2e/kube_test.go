package e2e

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/kubetest"
)

// isolationProbe is a build whose RUN step tries to reach addresses from
// inside its builder pod and writes what it got: REACHED or BLOCKED per
// address. Its own buildkitd (on the pod's loopback) is the control that
// shows nc works.
const isolationProbe = baseStages + `
FROM busybox
ARG TARGETS
RUN for a in 127.0.0.1:1234 $TARGETS; do \
      if timeout 5 nc ${a%:*} ${a#*:} </dev/null >/dev/null 2>&1; then echo "$a REACHED"; else echo "$a BLOCKED"; fi; \
    done > /probe
FROM scratch
COPY --from=1 /probe /probe
`

// Builders on a real single-node Kubernetes (hack/kube: etcd, apiserver,
// controller manager, scheduler, kubelet, containerd, runc, a NetworkPolicy
// engine), with the builder image kiln itself built: a build runs on a
// builder pod; the pod's volume keeps its cache when the pod is deleted and
// when the builder is scaled to zero; a kiln restart adopts the running pod;
// two projects' pods cannot reach each other or the cluster; cache reset
// and project deletion delete the objects.
func TestKubernetesBuilders(t *testing.T) {
	c := kubetest.Start(t)
	t.Logf("cluster set up in %s (up.sh and the builder image built by kiln)", c.SetUp.Round(time.Second))
	ns := "kiln-e2e-" + strconv.Itoa(os.Getpid())
	t.Cleanup(func() { c.Kubectl(t, "delete", "namespace", ns, "--wait=false", "--ignore-not-found") })
	s := startServer(t, "--builder-driver", "kubernetes", "--kube-config", c.Kubeconfig, "--kube-namespace", ns,
		"--kube-builder-image", c.BuilderImage, "--kube-pull-policy", "Never", "--kube-storage-class", c.StorageClass,
		"--kube-volume-size", "1Gi", "--kube-gateway-from", c.HostCIDR, "--builder-idle-timeout", "40s")
	kubectl := func(args ...string) string {
		t.Helper()
		return strings.TrimSpace(c.Kubectl(t, append([]string{"-n", ns}, args...)...))
	}
	projA := s.createProject(t, "kube-a")
	projB := s.createProject(t, "kube-b")
	podOf := func(proj string) string { return "kb-amd64-" + proj + "-0" }
	podField := func(proj, path string) string {
		t.Helper()
		return kubectl("get", "pod", podOf(proj), "--ignore-not-found", "-o", "jsonpath={"+path+"}")
	}
	dir := writeContext(t, map[string]string{"Dockerfile": cacheDockerfile, "data.txt": "kube input\n"})
	build := func(proj string) map[string]vertex {
		t.Helper()
		r := s.mustKiln(t, dir, "build", "--project", proj, "--progress", "rawjson", ".")
		return dockerfileSteps(t, r.Stdout+r.Stderr)
	}
	allCached := func(what string, steps map[string]vertex) {
		t.Helper()
		if n := cachedCount(steps); n != len(steps) || n == 0 {
			t.Fatalf("%s: %d of %d steps cached, want all", what, n, len(steps))
		}
	}

	// A build on a builder pod, which kiln made with its volume and secret.
	began := time.Now()
	if n := cachedCount(build(projA)); n != 0 {
		t.Errorf("first build: %d steps cached, want 0", n)
	}
	t.Logf("first build (builder cold start included) took %s", time.Since(began).Round(time.Millisecond))
	if phase := podField(projA, ".status.phase"); phase != "Running" {
		t.Fatalf("builder pod %s: phase %q", podOf(projA), phase)
	}
	created, _ := time.Parse(time.RFC3339, podField(projA, ".metadata.creationTimestamp"))
	scheduled, _ := time.Parse(time.RFC3339, podField(projA, `.status.conditions[?(@.type=="PodScheduled")].lastTransitionTime`))
	ready, _ := time.Parse(time.RFC3339, podField(projA, `.status.conditions[?(@.type=="Ready")].lastTransitionTime`))
	t.Logf("builder cold start: pod created → scheduled (its volume provisioned and bound) %s, scheduled → buildkitd ready %s",
		scheduled.Sub(created), ready.Sub(scheduled))
	for _, kind := range []string{"statefulset", "secret", "pvc"} {
		if got := kubectl("get", kind, "-l", "kiln.dev/project="+projA, "-o", "name"); got == "" {
			t.Errorf("no %s labelled with project %s", kind, projA)
		}
	}
	// The image has git for git contexts: it runs, and its HTTPS helper
	// gets as far as the network.
	if out := kubectl("exec", podOf(projA), "--", "sh", "-c", "git ls-remote https://127.0.0.1:9/r.git 2>&1; true"); !strings.Contains(out, "onnect") {
		t.Errorf("git in the builder image: %s", out)
	}
	if got := podField(projA, ".spec.automountServiceAccountToken"); got != "false" {
		t.Errorf("builder pod mounts a service account token: %q", got)
	}

	// Two projects' pods cannot reach each other, nor the apiserver; each
	// reaches its own buildkitd.
	build(projB)
	ipB := podField(projB, ".status.podIP")
	probeDir := writeContext(t, map[string]string{"Dockerfile": isolationProbe})
	out := t.TempDir()
	targets := ipB + ":1234 " + c.NodeAddr + ":16443"
	s.mustKiln(t, probeDir, "build", "--project", projA, "--build-arg", "TARGETS="+targets, "-o", "type=local,dest="+out, ".")
	probe, err := os.ReadFile(filepath.Join(out, "probe"))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("from project A's RUN step:\n%s", probe)
	for _, want := range []string{"127.0.0.1:1234 REACHED", ipB + ":1234 BLOCKED", c.NodeAddr + ":16443 BLOCKED"} {
		if !strings.Contains(string(probe), want) {
			t.Errorf("isolation probe: want %q in\n%s", want, probe)
		}
	}

	// The pod deleted: kiln waits for the StatefulSet's new pod, whose
	// volume kept the cache.
	oldUID := podField(projA, ".metadata.uid")
	kubectl("delete", "pod", podOf(projA), "--wait=true")
	allCached("build after the pod was deleted", build(projA))
	newUID := podField(projA, ".metadata.uid")
	if newUID == oldUID || newUID == "" {
		t.Errorf("pod uid %q after its deletion, was %q", newUID, oldUID)
	}

	// buildkitd crashing in its pod: the kubelet restarts it, kiln waits
	// for it, and the next build is fully cached.
	kubectl("exec", podOf(projA), "--", "kill", "1")
	eventually(t, time.Minute, "the builder container to restart", func() bool {
		return podField(projA, ".status.containerStatuses[0].restartCount") == "1"
	})
	allCached("build after buildkitd crashed", build(projA))

	// A kiln restart adopts the running pod rather than starting another,
	// and collects the objects of a project deleted while it was down (a
	// volume claim labelled as a builder's, of a project the store lacks).
	c.Apply(t, `{"apiVersion": "v1", "kind": "PersistentVolumeClaim",
  "metadata": {"name": "state-kb-amd64-gone-0", "namespace": "`+ns+`",
    "labels": {"app.kubernetes.io/name": "kiln-builder", "app.kubernetes.io/managed-by": "kiln", "kiln.dev/project": "gone", "kiln.dev/platform": "amd64"},
    "annotations": {"kiln.dev/project-id": "gone"}},
  "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "`+c.StorageClass+`", "resources": {"requests": {"storage": "1Gi"}}}}`)
	s.restart(t)
	eventually(t, time.Minute, "the deleted project's volume claim to be collected", func() bool {
		return kubectl("get", "pvc", "-l", "kiln.dev/project=gone", "-o", "name") == ""
	})
	allCached("build after kiln restarted", build(projA))
	if uid := podField(projA, ".metadata.uid"); uid != newUID {
		t.Errorf("kiln's restart replaced the builder pod (%s, was %s)", uid, newUID)
	}

	// Cache reset deletes the volume: the next build has no cache.
	claim := kubectl("get", "pvc", "state-"+podOf(projA), "-o", "jsonpath={.metadata.uid}")
	s.mustKiln(t, dir, "cache", "reset", "--project", projA)
	if n := cachedCount(build(projA)); n != 0 {
		t.Errorf("build after cache reset: %d steps cached, want 0", n)
	}
	if again := kubectl("get", "pvc", "state-"+podOf(projA), "-o", "jsonpath={.metadata.uid}"); again == claim {
		t.Errorf("cache reset kept volume claim %s", claim)
	}

	// An arm64 build gets a builder pod of its own; the cluster has no
	// arm64 node, so it runs on the amd64 one, under QEMU.
	arm := t.TempDir()
	s.mustKiln(t, writeMultiContext(t), "build", "--project", projA, "--platform", "linux/arm64", "-o", "type=local,dest="+arm, ".")
	if got, _ := os.ReadFile(filepath.Join(arm, "arch")); strings.TrimSpace(string(got)) != "aarch64" {
		t.Errorf("arm64 build on Kubernetes: uname -m = %q", got)
	}
	if sel := kubectl("get", "statefulset", "kb-arm64-"+projA, "-o", "jsonpath={.spec.template.spec.nodeSelector}"); strings.Contains(sel, "kubernetes.io/arch") {
		t.Errorf("arm64 builder asks for an arm64 node the cluster lacks: %s", sel)
	}

	// Idle builders scale to zero; the volume stays, and the next build
	// starts the pod again on it, fully cached.
	eventually(t, 3*time.Minute, "project A's idle builder pod to go", func() bool { return podField(projA, ".metadata.name") == "" })
	if r := kubectl("get", "statefulset", "kb-amd64-"+projA, "-o", "jsonpath={.spec.replicas}"); r != "0" {
		t.Errorf("idle builder's StatefulSet at %q replicas, want 0", r)
	}
	if kubectl("get", "pvc", "-l", "kiln.dev/project="+projA, "-o", "name") == "" {
		t.Error("scaling to zero deleted the volume")
	}
	allCached("build after scale to zero", build(projA))

	// Deleting a project deletes its builder's objects.
	s.mustKiln(t, dir, "projects", "delete", projB)
	eventually(t, 2*time.Minute, "project B's objects to go", func() bool {
		return kubectl("get", "statefulset,secret,pvc,pod", "-l", "kiln.dev/project="+projB, "-o", "name") == ""
	})
}
