package main

import (
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/kiln-dev/kiln/internal/client"
	"github.com/kiln-dev/kiln/internal/cliflag"
	"github.com/kiln-dev/kiln/internal/server"
)

// newServeCmd is `kiln serve`; version is logged when it starts serving.
func newServeCmd(version string) *cobra.Command {
	var cfg server.Config
	var logLevel string
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the kiln server: API, builders and their caches",
		Long: `Run the kiln control plane on one address (HTTP/1.1 and h2c, and TLS): Depot's
Connect services, kiln's OCI registry at /v2/, /healthz and /readyz, and the builder
gateway through which builds reach their project's builder. Builders (buildkitd) start
on demand per project, listen only on unix sockets, and run RUN steps in private
networks that cannot reach this machine or private ranges.
On first start it creates an organization and writes its admin token to
DATA/admin.token (mode 0600); the token is never logged.`,
		Example: `  kiln serve
  kiln serve --data /srv/kiln --addr 127.0.0.1:7420
  KILN_DATA=/tmp/kiln kiln serve --health-timeout 1m
  kiln serve --addr 0.0.0.0:7420 --public-url https://kiln.example.com` + oidcServeExample + registryServeExample + sourceServeExample + isolationServeExample + clickhouseServeExample + storeServeExample + replicasServeExample + kubeServeExample,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var level slog.Level
			if err := level.UnmarshalText([]byte(logLevel)); err != nil {
				return fmt.Errorf("--log-level %q: use debug, info, warn or error", logLevel)
			}
			cfg.Logger = slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: level}))
			if err := resolveTLS(&cfg); err != nil {
				return err
			}
			// The default admin address may be taken (another kiln serve on
			// this machine): serve without it then. One the operator chose
			// must bind.
			cfg.AdminOptional = !cmd.Flags().Changed("admin-addr") && os.Getenv("KILN_ADMIN_ADDR") == ""
			s, err := server.New(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			addr, err := s.Listen()
			if err != nil {
				return err
			}
			cfg.Logger.Info("kiln serving", "addr", addr.String(), "data", cfg.DataDir, "store", describeStore(cfg.Store, cfg.DataDir), "version", version)
			return s.Serve(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.DataDir, "data", client.DefaultDataDir(), "data directory (env KILN_DATA)")
	f.StringVar(&cfg.Addr, "addr", cliflag.EnvOr("KILN_ADDR", client.DefaultAddr), "listen address host:port (env KILN_ADDR)")
	f.StringVar(&cfg.PublicURL, "public-url", os.Getenv("KILN_PUBLIC_URL"), "base URL users reach this server at, for login approve and build share links (env KILN_PUBLIC_URL; default http://ADDR)")
	f.StringVar(&cfg.BuildkitdPath, "buildkitd", cliflag.EnvOr("KILN_BUILDKITD", cliflag.DefaultBuildkitd()), "buildkitd binary for builders (env KILN_BUILDKITD)")
	f.DurationVar(&cfg.HealthTimeout, "health-timeout", 5*time.Minute, "cancel a build whose client has not reported health for this long")
	f.DurationVar(&cfg.BuilderIdle, "builder-idle-timeout", 10*time.Minute, "stop a builder idle this long (its cache is kept)")
	f.DurationVar(&cfg.BuilderStall, "builder-stall-timeout", 60*time.Second, "kill and restart a builder in use that does not answer for this long (its builds fail)")
	f.Var(byteSize{&cfg.BuilderMemory}, "builder-memory", "memory limit of each builder, buildkitd and its RUN steps together (a cgroup's: a step that allocates past it is OOM-killed and its build fails), e.g. 4GiB; 0: no limit")
	f.DurationVar(&cfg.AuditRetention, "audit-retention", 90*24*time.Hour, "prune audit log events older than this (the newest 1,000,000 are kept at most)")
	f.StringArrayVar(&cfg.InsecureRegistries, "insecure-registry", nil, "registry HOST[:PORT] builders reach over plain HTTP (repeatable); kiln's own registry is always reached over TLS")
	f.StringVar(&cfg.AdminAddr, "admin-addr", cliflag.EnvOr("KILN_ADMIN_ADDR", server.DefaultAdminAddr), "host:port of the admin listener: Go's profiles at /debug/pprof/ and Prometheus metrics at /metrics, no authentication, so keep it on loopback; \"\" turns it off; its bound address is written to DATA/admin.addr (env KILN_ADMIN_ADDR)")
	f.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn, error")
	f.DurationVar(&cfg.BodyTimeout, "body-timeout", server.DefaultBodyTimeout, "drop a request whose body sends nothing for this long (uploads that keep moving are not cut)")
	f.DurationVar(&cfg.StreamBodyTimeout, "stream-body-timeout", server.DefaultStreamBodyTimeout, "the same for client streams (build status, health), whose messages may be minutes apart")
	registerOIDCFlags(f, &cfg.OIDC)
	registerRegistryFlags(f, &cfg.Registry)
	registerSourceFlags(f, &cfg.Source)
	registerIsolationFlags(f, &cfg)
	registerClickHouseFlags(f, &cfg.ClickHouse)
	registerStoreFlags(f, &cfg)
	registerKubeFlags(f, &cfg)
	return cmd
}
