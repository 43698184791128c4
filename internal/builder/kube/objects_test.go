package kube

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func testFleet() *Fleet {
	return &Fleet{cfg: Config{Namespace: "kb", Image: "img", VolumeSize: resource.MustParse("1Gi"), StorageClass: "local",
		DenyEgress: DefaultDenyEgress, GatewayFrom: []netip.Prefix{netip.MustParsePrefix("10.215.0.1/32")},
		AllowEgress: []netip.Prefix{netip.MustParsePrefix("10.9.0.0/16")}}}
}

// Names fit Kubernetes' limits whatever the project id, and two projects
// never share one.
func TestObjectNames(t *testing.T) {
	seen := map[string]string{}
	for _, id := range []string{"p1", "-p", strings.Repeat("a", 64), strings.Repeat("a", 63) + "b", "a--b"} {
		for _, arch := range []string{"amd64", "arm64"} {
			n := objectName(id, arch)
			if len(n) > 52 || !labelValueRe.MatchString(n) || len(claimName(n)) > 63 {
				t.Errorf("objectName(%q, %s) = %q: not a valid StatefulSet name", id, arch, n)
			}
			if other, ok := seen[n]; ok {
				t.Errorf("%q and %q share object name %q", id, other, n)
			}
			seen[n] = id
		}
		if l := projectLabel(id); !labelValueRe.MatchString(l) {
			t.Errorf("projectLabel(%q) = %q: not a label value", id, l)
		}
	}
}

// A builder pod is privileged (buildkitd's OCI worker needs it) and gets
// nothing else: no service account token, no host namespaces or paths;
// its resources are its project's hardware size.
func TestPodTemplate(t *testing.T) {
	f := testFleet()
	tmpl := f.podTemplate("kb-amd64-p1", "p1", "amd64", "linux/amd64", sizeOf(2, Size{2, 4}), true)
	spec := tmpl.Spec
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken || spec.HostNetwork || spec.HostPID || spec.HostIPC {
		t.Errorf("pod gets host namespaces or a token: %+v", spec)
	}
	for _, v := range spec.Volumes {
		if v.HostPath != nil {
			t.Errorf("host path volume %s", v.Name)
		}
	}
	if spec.NodeSelector["kubernetes.io/arch"] != "amd64" {
		t.Errorf("node selector %v", spec.NodeSelector)
	}
	c := spec.Containers[0]
	if c.SecurityContext == nil || c.SecurityContext.Privileged == nil || !*c.SecurityContext.Privileged {
		t.Error("buildkitd not privileged")
	}
	if got := c.Resources.Limits[corev1.ResourceCPU]; got.Value() != 4 {
		t.Errorf("cpu limit %s, want 4 (HARDWARE_4X4)", got.String())
	}
	if got := c.Resources.Limits[corev1.ResourceMemory]; got.Value() != 4<<30 {
		t.Errorf("memory limit %s, want 4Gi", got.String())
	}
	if !strings.Contains(strings.Join(c.Args, " "), "--tlscacert /etc/kiln/ca.crt") {
		t.Errorf("buildkitd does not require client certificates: %v", c.Args)
	}
	if tmpl.Labels[labelProject] != "p1" || tmpl.Labels[labelPlatform] != "amd64" {
		t.Errorf("labels %v", tmpl.Labels)
	}
	// Unknown or unspecified hardware: the default size.
	if s := sizeOf(0, Size{2, 4}); s != (Size{2, 4}) {
		t.Errorf("default size %v", s)
	}
	// The template digest changes with what the pod runs.
	other := f.podTemplate("kb-amd64-p1", "p1", "amd64", "linux/amd64", sizeOf(4, Size{2, 4}), true)
	if templateDigest(tmpl) == templateDigest(other) {
		t.Error("templates of two sizes have one digest")
	}
}

// The builders' NetworkPolicy admits only the gateway, on buildkitd's
// port, and lets pods reach neither private ranges (other pods, the
// cluster's services and nodes) nor metadata services, except what the
// operator allowed.
func TestBuilderPolicy(t *testing.T) {
	p := testFleet().builderPolicy()
	if len(p.Spec.Ingress) != 1 || len(p.Spec.Ingress[0].From) != 1 || p.Spec.Ingress[0].From[0].IPBlock.CIDR != "10.215.0.1/32" {
		t.Errorf("ingress %+v", p.Spec.Ingress)
	}
	if p.Spec.Ingress[0].Ports[0].Port.IntValue() != port {
		t.Errorf("ingress port %v", p.Spec.Ingress[0].Ports)
	}
	v4 := p.Spec.Egress[0].To[0].IPBlock
	if v4.CIDR != "0.0.0.0/0" || !strings.Contains(strings.Join(v4.Except, ","), "10.0.0.0/8") || !strings.Contains(strings.Join(v4.Except, ","), "169.254.0.0/16") {
		t.Errorf("egress %+v", v4)
	}
	last := p.Spec.Egress[len(p.Spec.Egress)-1]
	if last.To[0].IPBlock.CIDR != "10.9.0.0/16" {
		t.Errorf("allowed egress %+v", last)
	}
	// No gateway CIDRs: kiln's own pods.
	f := testFleet()
	f.cfg.GatewayFrom = nil
	if from := f.builderPolicy().Spec.Ingress[0].From[0]; from.PodSelector == nil || from.PodSelector.MatchLabels[labelName] != "kiln" {
		t.Errorf("ingress without gateway CIDRs: %+v", from)
	}
}

// A pod is lost when it goes, is replaced or restarts; not when it only
// stops being ready for a moment.
func TestPodLost(t *testing.T) {
	pod := &corev1.Pod{}
	pod.UID = "u1"
	pod.Status.Phase = corev1.PodRunning
	pod.Status.ContainerStatuses = []corev1.ContainerStatus{{RestartCount: 1}}
	if why, _ := podLost(pod, "u1", 1); why != "" {
		t.Errorf("same pod lost: %s", why)
	}
	if why, _ := podLost(nil, "u1", 1); why == "" {
		t.Error("gone pod not lost")
	}
	if why, _ := podLost(pod, "u2", 1); why == "" {
		t.Error("replaced pod not lost")
	}
	pod.Status.ContainerStatuses[0].RestartCount = 2
	finished := time.Unix(1000, 0)
	pod.Status.ContainerStatuses[0].LastTerminationState.Terminated = &corev1.ContainerStateTerminated{Reason: "OOMKilled", FinishedAt: metav1.NewTime(finished)}
	if why, died := podLost(pod, "u1", 1); !strings.Contains(why, "OOMKilled") || !died.Equal(finished) {
		t.Errorf("restart: %q at %s", why, died)
	}
}
