package main

import (
	"os"
	"time"

	"github.com/spf13/pflag"

	"github.com/kiln-dev/kiln/internal/cliflag"
	"github.com/kiln-dev/kiln/internal/runner"
	"github.com/kiln-dev/kiln/internal/server"
)

// sourceServeExample shows the source-build flags in `kiln serve --help`.
const sourceServeExample = `
  # uploaded build contexts in an S3 bucket: kiln reaches it at the internal
  # endpoint, uploaders at the public one (presigned URLs name that host):
  KILN_S3_ACCESS_KEY=… KILN_S3_SECRET_KEY=… kiln serve --contexts-s3-bucket contexts \
    --contexts-s3-endpoint http://minio.internal:9000 --contexts-s3-public-endpoint https://s3.example.com`

// registerSourceFlags adds `kiln serve`'s flags for builds from uploaded
// source.
func registerSourceFlags(f *pflag.FlagSet, cfg *server.SourceConfig) {
	f.StringVar(&cfg.S3.Bucket, "contexts-s3-bucket", os.Getenv("KILN_CONTEXTS_S3_BUCKET"),
		"keep uploaded build contexts in this S3 bucket instead of DATA/blobs (env KILN_CONTEXTS_S3_BUCKET; keys from KILN_S3_ACCESS_KEY/KILN_S3_SECRET_KEY)")
	f.StringVar(&cfg.S3.Endpoint, "contexts-s3-endpoint", os.Getenv("KILN_CONTEXTS_S3_ENDPOINT"),
		"URL kiln reaches the S3 server at (env KILN_CONTEXTS_S3_ENDPOINT; default AWS)")
	f.StringVar(&cfg.S3.PublicEndpoint, "contexts-s3-public-endpoint", os.Getenv("KILN_CONTEXTS_S3_PUBLIC_ENDPOINT"),
		"URL uploaders reach the S3 server at; upload URLs are signed for it (env KILN_CONTEXTS_S3_PUBLIC_ENDPOINT; default: the endpoint)")
	f.StringVar(&cfg.S3.Region, "contexts-s3-region", cliflag.EnvOr("KILN_CONTEXTS_S3_REGION", "us-east-1"), "the bucket's region (env KILN_CONTEXTS_S3_REGION)")
	f.StringVar(&cfg.S3.Prefix, "contexts-s3-prefix", os.Getenv("KILN_CONTEXTS_S3_PREFIX"), "key prefix inside the bucket (env KILN_CONTEXTS_S3_PREFIX)")
	f.BoolVar(&cfg.S3.PathStyle, "contexts-s3-path-style", true, "address the bucket by path (http://host/bucket/key), as MinIO and versitygw expect")
	cfg.S3.AccessKey, cfg.S3.SecretKey = os.Getenv("KILN_S3_ACCESS_KEY"), os.Getenv("KILN_S3_SECRET_KEY")
	f.IntVar(&cfg.MaxConcurrent, "source-builds", 4, "source builds running at once, over all projects")
	f.IntVar(&cfg.MaxPerProject, "source-builds-per-project", 2, "source builds of one project running at once (more wait in the queue)")
	f.IntVar(&cfg.MaxQueuedPerProject, "source-queue-per-project", 100, "source builds one project may have waiting; more are refused (ResourceExhausted) until some start")
	f.DurationVar(&cfg.ContextRetention, "context-retention", 7*24*time.Hour, "delete uploaded build contexts this long after upload (RebuildBuild works until then)")
	f.DurationVar(&cfg.UploadTTL, "upload-url-ttl", 15*time.Minute, "how long an upload URL accepts its PUT")
	f.IntVar(&cfg.MaxContextsPerProject, "max-contexts-per-project", 10000, "uploaded contexts one project may have retained; more upload URLs are refused (ResourceExhausted)")
	f.Int64Var(&cfg.MaxUpload, "max-context-size", 1<<30, "largest build context upload accepted, in bytes")
	f.Int64Var(&cfg.MaxContextBytesPerProject, "max-context-bytes-per-project", runner.DefaultContextBytesPerProject,
		"bytes of uploaded contexts one project may have retained (an upload of undeclared size reserves what is left); more upload URLs are refused (ResourceExhausted)")
	f.StringVar(&cfg.PushAuthFile, "push-auth-file", os.Getenv("KILN_PUSH_AUTH_FILE"),
		"Docker config.json with credentials (\"auths\") of registries source builds may push to besides kiln's own (env KILN_PUSH_AUTH_FILE)")
	f.BoolVar(&cfg.GitPrivateHosts, "git-private-hosts", os.Getenv("KILN_GIT_PRIVATE_HOSTS") == "1",
		"let builders fetch git contexts from loopback and private addresses, which the builders' egress policy refuses by default (for git servers on kiln's own machine or network whose users may all reach them; env KILN_GIT_PRIVATE_HOSTS=1)")
}
