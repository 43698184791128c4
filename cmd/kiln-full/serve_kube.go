package main

import (
	"os"

	"github.com/spf13/pflag"

	"github.com/kiln-dev/kiln/internal/cliflag"
	"github.com/kiln-dev/kiln/internal/server"
)

// kubeServeExample shows the Kubernetes driver in `kiln serve --help`.
const kubeServeExample = `
  # builders as pods on Kubernetes, their cache on volumes (docs/kubernetes.md):
  kiln serve --builder-driver kubernetes --kube-config ~/.kube/config \
    --kube-builder-image registry.example.com/kiln/builder:v1 --kube-gateway-from 10.0.5.0/24`

// registerKubeFlags adds the builder driver's flags to `kiln serve`.
func registerKubeFlags(f *pflag.FlagSet, cfg *server.Config) {
	f.StringVar(&cfg.BuilderDriver, "builder-driver", cliflag.EnvOr("KILN_BUILDER_DRIVER", server.DriverLocal),
		"where builders run: local (buildkitd processes on this machine) or kubernetes (a pod and a volume per project and platform; docs/kubernetes.md) (env KILN_BUILDER_DRIVER)")
	k := &cfg.Kube
	f.StringVar(&k.Kubeconfig, "kube-config", os.Getenv("KUBECONFIG"),
		"kubeconfig file of the cluster builders run on (env KUBECONFIG; default: the in-cluster configuration of kiln's pod)")
	f.StringVar(&k.Namespace, "kube-namespace", cliflag.EnvOr("KILN_KUBE_NAMESPACE", "kiln-builders"),
		"namespace of the builder pods, volumes and secrets; created if missing (env KILN_KUBE_NAMESPACE)")
	f.StringVar(&k.Image, "kube-builder-image", os.Getenv("KILN_KUBE_BUILDER_IMAGE"),
		"the builder image: buildkitd, runc and the CNI plugins (build hack/kube/builder.Dockerfile with kiln and push it) (env KILN_KUBE_BUILDER_IMAGE)")
	f.StringVar(&k.PullPolicy, "kube-pull-policy", "IfNotPresent", "pull policy of the builder image: Always, IfNotPresent or Never")
	f.StringVar(&k.StorageClass, "kube-storage-class", os.Getenv("KILN_KUBE_STORAGE_CLASS"),
		"storage class of the builders' volumes (env KILN_KUBE_STORAGE_CLASS; default: the cluster's default class)")
	f.StringVar(&k.VolumeSize, "kube-volume-size", "20Gi", "size of each builder's volume (its layer cache)")
	f.StringArrayVar(&k.GatewayFrom, "kube-gateway-from", nil,
		"CIDR or address kiln's builder gateway connects to builder pods from, the only source they accept (repeatable; default: kiln's own pods in the namespace, labelled app.kubernetes.io/name=kiln)")
	f.StringArrayVar(&k.AllowEgress, "kube-allow-egress", nil,
		"private CIDR every builder pod may reach although private ranges are blocked, such as kiln's registry's or a package mirror's address (repeatable)")
}
