package server

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/kiln-dev/kiln/internal/build"
	"github.com/kiln-dev/kiln/internal/builder"
	"github.com/kiln-dev/kiln/internal/builder/kube"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/gateway"
)

// Builder drivers (Config.BuilderDriver).
const (
	DriverLocal      = "local"
	DriverKubernetes = "kubernetes"
)

// builders is the builder driver kiln serve runs: buildkitd processes on
// this machine (builder.Fleet) or pods on Kubernetes (kube.Fleet).
type builders interface {
	build.Fleet
	build.Acquirer
	gateway.Builders
	PlatformOf(serverName string) string
	Leased(projectID, platform, leaseID string) bool
	Reset(ctx context.Context, projectID string) error
	SetEgressAllow(projectID string, allow []netip.Prefix) error
	Status() []builder.Status
	Close(ctx context.Context) error
}

var (
	_ builders = (*builder.Fleet)(nil)
	_ builders = (*kube.Fleet)(nil)
)

// KubeConfig configures the Kubernetes builder driver (docs/kubernetes.md).
type KubeConfig struct {
	// Kubeconfig is a kubeconfig file; "" → the in-cluster configuration
	// (kiln running in a pod, with its service account).
	Kubeconfig   string
	Namespace    string // "" → kiln-builders
	Image        string // the builder image (hack/kube/builder.Dockerfile)
	PullPolicy   string // Always, IfNotPresent (default) or Never
	StorageClass string // "" → the cluster's default
	VolumeSize   string // each builder's volume; "" → 20Gi
	// GatewayFrom are the CIDRs kiln's gateway connects to builder pods
	// from; none: kiln's own pods in the namespace.
	GatewayFrom []string
	// AllowEgress are private destinations every builder pod may reach
	// (kiln's registry, a mirror).
	AllowEgress []string
}

// newKubeFleet is the Kubernetes driver, its builds' callbacks into builds
// (made after it, before any builder can start).
func (s *Server) newKubeFleet(ctx context.Context, builds **build.Service) (*kube.Fleet, error) {
	kc := s.cfg.Kube
	var rc *rest.Config
	var err error
	if kc.Kubeconfig != "" {
		rc, err = clientcmd.BuildConfigFromFlags("", kc.Kubeconfig)
	} else {
		rc, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("--builder-driver kubernetes: no cluster to talk to (give --kube-config FILE, or run kiln in a pod): %v: %w", err, errdefs.ErrInvalid)
	}
	rc.UserAgent = "kiln"
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("--builder-driver kubernetes: %w", err)
	}
	cfg := kube.Config{Client: client, Namespace: kc.Namespace, Image: kc.Image, StorageClass: kc.StorageClass,
		PullPolicy: corev1.PullPolicy(kc.PullPolicy), CA: s.ca, IdleTTL: s.cfg.BuilderIdle, Logger: s.cfg.Logger,
		InsecureRegistries: s.cfg.InsecureRegistries, OwnRegistry: s.ownRegistry,
		OnExit: func(projectID, platform string, leases []string, err error) {
			(*builds).BuilderLost(projectID, platform, leases, err)
		}}
	if cfg.Image == "" {
		return nil, fmt.Errorf("--builder-driver kubernetes needs --kube-builder-image (build hack/kube/builder.Dockerfile with kiln and push it): %w", errdefs.ErrInvalid)
	}
	switch cfg.PullPolicy {
	case "", corev1.PullAlways, corev1.PullIfNotPresent, corev1.PullNever:
	default:
		return nil, fmt.Errorf("--kube-pull-policy %q: want Always, IfNotPresent or Never: %w", kc.PullPolicy, errdefs.ErrInvalid)
	}
	if kc.VolumeSize != "" {
		if cfg.VolumeSize, err = resource.ParseQuantity(kc.VolumeSize); err != nil || cfg.VolumeSize.Sign() <= 0 {
			return nil, fmt.Errorf("--kube-volume-size %q: want a size such as 20Gi: %w", kc.VolumeSize, errdefs.ErrInvalid)
		}
	}
	if cfg.GatewayFrom, err = parseCIDRs("--kube-gateway-from", kc.GatewayFrom); err != nil {
		return nil, err
	}
	if cfg.AllowEgress, err = parseCIDRs("--kube-allow-egress", kc.AllowEgress); err != nil {
		return nil, err
	}
	if s.cluster.Shared() {
		// With replicas, a builder found running is adopted by the replica
		// it is placed on.
		cfg.Adopt = func(projectID, platform string) bool {
			ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			owner, err := s.cluster.PlaceBuilder(ctx, projectID, platform)
			return err == nil && owner == s.cluster.Self()
		}
	}
	startCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	return kube.NewFleet(startCtx, cfg)
}

func parseCIDRs(flag string, in []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, c := range in {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			a, aerr := netip.ParseAddr(c)
			if aerr != nil {
				return nil, fmt.Errorf("%s %q: want a CIDR such as 10.1.0.0/16 or an address: %w", flag, c, errdefs.ErrInvalid)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		out = append(out, p.Masked())
	}
	return out, nil
}
