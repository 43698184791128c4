package main

import (
	"os"

	"github.com/spf13/pflag"

	"github.com/kiln-dev/kiln/internal/cliflag"
	"github.com/kiln-dev/kiln/internal/registry"
	"github.com/kiln-dev/kiln/internal/server"
)

// registryServeExample shows the registry flags in `kiln serve --help`.
const registryServeExample = `
  # kiln's registry (at /v2/) in an S3 bucket, credentials from the environment;
  # saved images kept 14 days unless a project says otherwise:
  AWS_ACCESS_KEY_ID=… AWS_SECRET_ACCESS_KEY=… kiln serve --registry-s3-bucket kiln-images \
    --registry-s3-region eu-west-1 --registry-retention 14d`

// registerRegistryFlags adds `kiln serve`'s flags for kiln's registry.
func registerRegistryFlags(f *pflag.FlagSet, cfg *server.RegistryConfig) {
	f.StringVar(&cfg.S3.Bucket, "registry-s3-bucket", os.Getenv("KILN_REGISTRY_S3_BUCKET"),
		"store the registry's images in this S3 bucket instead of DATA/registry (credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the instance role; env KILN_REGISTRY_S3_BUCKET)")
	f.StringVar(&cfg.S3.Region, "registry-s3-region", os.Getenv("KILN_REGISTRY_S3_REGION"), "the bucket's region (default us-east-1; env KILN_REGISTRY_S3_REGION)")
	f.StringVar(&cfg.S3.Endpoint, "registry-s3-endpoint", os.Getenv("KILN_REGISTRY_S3_ENDPOINT"),
		"URL of an S3-compatible server (path-style; http:// means no TLS); default AWS (env KILN_REGISTRY_S3_ENDPOINT)")
	cfg.Retention = registry.DefaultRetention
	f.Var(cliflag.Retention{D: &cfg.Retention}, "registry-retention",
		"keep saved images this long after they were pushed, in projects that set no retention ('kiln projects update --registry-retention'), e.g. 7d, 36h")
	f.DurationVar(&cfg.GCInterval, "registry-gc-interval", registry.DefaultGCInterval, "time between the registry's garbage collections")
	f.DurationVar(&cfg.GCGrace, "registry-gc-grace", registry.DefaultGCGrace,
		"the registry's garbage collector never deletes what was pushed or used more recently, and purges upload sessions idle longer (a push must finish within it)")
}
