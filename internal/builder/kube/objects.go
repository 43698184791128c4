package kube

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"regexp"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Labels and annotations on every object kiln makes. An operator selects
// a project's builders with kiln.dev/project=<id> (a digest for an id
// that cannot be a label value; the annotation has the id either way).
const (
	labelName      = "app.kubernetes.io/name"
	labelManagedBy = "app.kubernetes.io/managed-by"
	labelProject   = "kiln.dev/project"
	labelPlatform  = "kiln.dev/platform"
	annoProject    = "kiln.dev/project-id"
	annoTemplate   = "kiln.dev/template"

	nameBuilder = "kiln-builder"
	managedBy   = "kiln"
	// builderPolicy is the NetworkPolicy every builder pod is under.
	builderPolicy = "kiln-builders"

	port      = 1234
	certsDir  = "/etc/kiln"
	stateDir  = "/var/lib/buildkit"
	stateName = "state"
)

// managedSelector selects everything kiln made.
var managedSelector = labelManagedBy + "=" + managedBy + "," + labelName + "=" + nameBuilder

var labelValueRe = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

// projectLabel is the label value naming a project: its id when that is a
// valid label value, else a digest of it.
func projectLabel(projectID string) string {
	if labelValueRe.MatchString(projectID) {
		return projectID
	}
	sum := sha256.Sum256([]byte(projectID))
	return "h-" + hex.EncodeToString(sum[:20])
}

// projectSelector selects a project's objects.
func projectSelector(projectID string) string {
	return managedSelector + "," + labelProject + "=" + projectLabel(projectID)
}

// objectName is the name of a builder's StatefulSet and Secret:
// kb-<arch>-<project>, shortened with a digest so that the pod's
// controller-revision-hash label (name + 11 characters) fits in 63.
func objectName(projectID, arch string) string {
	name := "kb-" + arch + "-" + projectID
	if len(name) <= 52 && labelValueRe.MatchString(name) {
		return name
	}
	sum := sha256.Sum256([]byte(projectID))
	short := strings.Trim(projectID, "-")
	if len(short) > 30 {
		short = strings.Trim(short[:30], "-")
	}
	return "kb-" + arch + "-" + short + "-" + hex.EncodeToString(sum[:4])
}

// podName is the name of the StatefulSet's one pod.
func podName(object string) string { return object + "-0" }

// claimName is the name of the pod's state volume claim.
func claimName(object string) string { return stateName + "-" + podName(object) }

func labels(projectID, arch string) map[string]string {
	return map[string]string{
		labelName:      nameBuilder,
		labelManagedBy: managedBy,
		labelProject:   projectLabel(projectID),
		labelPlatform:  arch,
	}
}

// Size is a builder pod's resources: what its project's hardware size
// gives it (limits), and a quarter of that requested, so that builders
// share nodes and burst to their size.
type Size struct {
	CPU    int64 // cores
	Memory int64 // GiB
}

// hardwareSizes are Depot's depot.core.v1.Hardware values: cores x GiB.
var hardwareSizes = map[int32]Size{
	1: {16, 32}, 2: {4, 4}, 3: {8, 8}, 4: {8, 16}, 5: {32, 64}, 6: {64, 128}, 7: {96, 192}, 8: {192, 384},
}

// sizeOf is the size of hardware (Config.DefaultSize when unspecified or
// unknown).
func sizeOf(hardware int32, def Size) Size {
	if s, ok := hardwareSizes[hardware]; ok {
		return s
	}
	return def
}

func (s Size) resources() corev1.ResourceRequirements {
	cpuReq := resource.NewMilliQuantity(max(s.CPU*1000/4, 250), resource.DecimalSI)
	memReq := resource.NewQuantity(max(s.Memory<<30/4, 512<<20), resource.BinarySI)
	return corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceCPU: *cpuReq, corev1.ResourceMemory: *memReq},
		Limits: corev1.ResourceList{
			corev1.ResourceCPU:    *resource.NewQuantity(s.CPU, resource.DecimalSI),
			corev1.ResourceMemory: *resource.NewQuantity(s.Memory<<30, resource.BinarySI),
		},
	}
}

// podTemplate is what a builder's pod runs: buildkitd as the image's
// entrypoint with kiln's arguments, its certificates and configuration
// from the builder's Secret, its state on the claim. Privileged, because
// buildkitd's OCI worker mounts, unshares and runs runc; nothing else: no
// service account token, no host namespace or path, no service links.
func (f *Fleet) podTemplate(object, projectID, arch, platform string, size Size, archNodes bool) corev1.PodTemplateSpec {
	privileged := true
	noToken := false
	noLinks := false
	grace := int64(30)
	nodeSel := map[string]string{"kubernetes.io/os": "linux"}
	if archNodes {
		nodeSel["kubernetes.io/arch"] = arch
	}
	probe := &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(port)}}}
	liveness := probe.DeepCopy()
	liveness.PeriodSeconds, liveness.FailureThreshold, liveness.InitialDelaySeconds = 10, 6, 10
	probe.PeriodSeconds = 1
	return corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: labels(projectID, arch), Annotations: map[string]string{annoProject: projectID}},
		Spec: corev1.PodSpec{
			AutomountServiceAccountToken:  &noToken,
			EnableServiceLinks:            &noLinks,
			TerminationGracePeriodSeconds: &grace,
			NodeSelector:                  nodeSel,
			// The node's resolver, not the cluster's DNS: builds resolve
			// public names; cluster services are not theirs to find.
			DNSPolicy: corev1.DNSDefault,
			Containers: []corev1.Container{{
				Name:            "buildkitd",
				Image:           f.cfg.Image,
				ImagePullPolicy: f.cfg.PullPolicy,
				Args: []string{
					"--config", certsDir + "/buildkitd.toml",
					"--root", stateDir,
					"--addr", fmt.Sprintf("tcp://0.0.0.0:%d", port),
					"--tlscert", certsDir + "/tls.crt",
					"--tlskey", certsDir + "/tls.key",
					"--tlscacert", certsDir + "/ca.crt",
					"--oci-worker-platform", platform,
				},
				Ports:           []corev1.ContainerPort{{Name: "buildkitd", ContainerPort: port, Protocol: corev1.ProtocolTCP}},
				Resources:       size.resources(),
				SecurityContext: &corev1.SecurityContext{Privileged: &privileged},
				ReadinessProbe:  probe,
				LivenessProbe:   liveness,
				VolumeMounts: []corev1.VolumeMount{
					{Name: stateName, MountPath: stateDir},
					{Name: "kiln", MountPath: certsDir, ReadOnly: true},
				},
			}},
			Volumes: []corev1.Volume{{Name: "kiln", VolumeSource: corev1.VolumeSource{
				Secret: &corev1.SecretVolumeSource{SecretName: object},
			}}},
		},
	}
}

// statefulSet is a builder's StatefulSet at replicas, with template.
func (f *Fleet) statefulSet(object, projectID, arch string, replicas int32, tmpl corev1.PodTemplateSpec) *appsv1.StatefulSet {
	lb := labels(projectID, arch)
	claimLabels := labels(projectID, arch)
	return &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Name: object, Namespace: f.cfg.Namespace, Labels: lb,
			Annotations: map[string]string{annoProject: projectID, annoTemplate: templateDigest(tmpl)}},
		Spec: appsv1.StatefulSetSpec{
			Replicas:            &replicas,
			ServiceName:         object,
			PodManagementPolicy: appsv1.ParallelPodManagement,
			Selector:            &metav1.LabelSelector{MatchLabels: lb},
			Template:            tmpl,
			// The state outlives the pod (scale to zero, a crash) and goes
			// with the StatefulSet (a reset or the project's deletion).
			PersistentVolumeClaimRetentionPolicy: &appsv1.StatefulSetPersistentVolumeClaimRetentionPolicy{
				WhenDeleted: appsv1.DeletePersistentVolumeClaimRetentionPolicyType,
				WhenScaled:  appsv1.RetainPersistentVolumeClaimRetentionPolicyType,
			},
			VolumeClaimTemplates: []corev1.PersistentVolumeClaim{{
				ObjectMeta: metav1.ObjectMeta{Name: stateName, Labels: claimLabels, Annotations: map[string]string{annoProject: projectID}},
				Spec: corev1.PersistentVolumeClaimSpec{
					AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
					StorageClassName: f.storageClass(),
					Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{
						corev1.ResourceStorage: f.cfg.VolumeSize,
					}},
				},
			}},
		},
	}
}

func (f *Fleet) storageClass() *string {
	if f.cfg.StorageClass == "" {
		return nil
	}
	sc := f.cfg.StorageClass
	return &sc
}

// templateDigest identifies a pod template: a StatefulSet whose template
// has not changed is scaled, never updated, so a running pod is adopted
// as it is.
func templateDigest(t corev1.PodTemplateSpec) string {
	sum := sha256.Sum256([]byte(t.String()))
	return hex.EncodeToString(sum[:12])
}

// secret holds a builder's server certificate and key, the CA its
// clients' certificates must chain to (pki.BuilderClientCA),
// buildkitd.toml and the CA of kiln's registry.
func (f *Fleet) secret(object, projectID, arch string, data map[string][]byte) *corev1.Secret {
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: object, Namespace: f.cfg.Namespace, Labels: labels(projectID, arch),
			Annotations: map[string]string{annoProject: projectID}},
		Type: corev1.SecretTypeOpaque,
		Data: data,
	}
}

// builderPolicy keeps builder pods apart: they accept connections only
// from kiln's gateway (Config.GatewayFrom, or kiln's own pods), on
// buildkitd's port; they reach anything but Config.DenyEgress (the
// cluster's pods and services, nodes, private ranges, link-local metadata
// services), and DNS. So no builder reaches another, or the cluster.
func (f *Fleet) builderPolicy() *networkingv1.NetworkPolicy {
	tcp := corev1.ProtocolTCP
	udp := corev1.ProtocolUDP
	bkPort := intstr.FromInt32(port)
	dns := intstr.FromInt32(53)
	var from []networkingv1.NetworkPolicyPeer
	for _, p := range f.cfg.GatewayFrom {
		from = append(from, networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: p.String()}})
	}
	if len(from) == 0 {
		from = []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{labelName: "kiln"}}}}
	}
	var to []networkingv1.NetworkPolicyPeer
	for _, all := range []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")} {
		block := &networkingv1.IPBlock{CIDR: all.String()}
		for _, d := range f.cfg.DenyEgress {
			if d.Addr().Is4() == all.Addr().Is4() {
				block.Except = append(block.Except, d.String())
			}
		}
		to = append(to, networkingv1.NetworkPolicyPeer{IPBlock: block})
	}
	egress := []networkingv1.NetworkPolicyEgressRule{
		{To: to},
		{Ports: []networkingv1.NetworkPolicyPort{{Protocol: &udp, Port: &dns}, {Protocol: &tcp, Port: &dns}}},
	}
	if len(f.cfg.AllowEgress) > 0 {
		var allow []networkingv1.NetworkPolicyPeer
		for _, p := range f.cfg.AllowEgress {
			allow = append(allow, networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: p.Masked().String()}})
		}
		egress = append(egress, networkingv1.NetworkPolicyEgressRule{To: allow})
	}
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: builderPolicy, Namespace: f.cfg.Namespace,
			Labels: map[string]string{labelName: nameBuilder, labelManagedBy: managedBy}},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{labelName: nameBuilder, labelManagedBy: managedBy}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From:  from,
				Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &bkPort}},
			}},
			Egress: egress,
		},
	}
}

// egressPolicy lets a project's builder pods reach the private
// destinations its operator allowed (the project's egress allow-list);
// NetworkPolicies add up, so this widens builderPolicy for them alone.
func (f *Fleet) egressPolicy(projectID string, allow []netip.Prefix) *networkingv1.NetworkPolicy {
	var to []networkingv1.NetworkPolicyPeer
	for _, p := range allow {
		to = append(to, networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: p.Masked().String()}})
	}
	sel := map[string]string{labelName: nameBuilder, labelManagedBy: managedBy, labelProject: projectLabel(projectID)}
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: egressPolicyName(projectID), Namespace: f.cfg.Namespace, Labels: sel,
			Annotations: map[string]string{annoProject: projectID}},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: sel},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress},
			Egress:      []networkingv1.NetworkPolicyEgressRule{{To: to}},
		},
	}
}

func egressPolicyName(projectID string) string {
	return objectName(projectID, "egress")
}

// DefaultDenyEgress are the destinations builder pods may not reach
// unless a project's egress allow-list says so: private, shared and
// link-local ranges (where a cluster's pods, services, nodes and cloud
// metadata live), loopback and multicast.
var DefaultDenyEgress = []netip.Prefix{
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("172.16.0.0/12"),
	netip.MustParsePrefix("192.168.0.0/16"),
	netip.MustParsePrefix("100.64.0.0/10"),
	netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("224.0.0.0/4"),
	netip.MustParsePrefix("fc00::/7"),
	netip.MustParsePrefix("fe80::/10"),
	netip.MustParsePrefix("::1/128"),
}
