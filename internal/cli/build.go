package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"connectrpc.com/connect"
	cliv1 "github.com/depot/depot-go/proto/depot/cli/v1"
	"github.com/depot/depot-go/proto/depot/cli/v1/cliv1connect"
	bkclient "github.com/moby/buildkit/client"
	"github.com/moby/buildkit/util/grpcerrors"
	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kiln-dev/kiln/internal/client"
	"github.com/kiln-dev/kiln/internal/engine"
	"github.com/kiln-dev/kiln/internal/errdefs"
)

type buildFlags struct {
	opts     engine.Options
	project  string
	iidfile  string
	metadata string
	wait     time.Duration
}

func newBuildCmd(g *globals) *cobra.Command {
	var bf buildFlags
	cmd := &cobra.Command{
		Use:   "build [OPTIONS] PATH | -",
		Short: "Build a Dockerfile context on the project's kiln builder",
		Long: `Build a Dockerfile on the project's remote BuildKit builder, like 'docker buildx build'.
The context is sent incrementally (.dockerignore honoured) and the layer cache
persists in the project, so rebuilds are fast on any machine.

PATH is a directory, or - to read a tar archive (or a lone Dockerfile) from stdin.`,
		Example: `  kiln build -o type=oci,dest=out.tar .
  kiln build -t app:dev --target runtime --build-arg VERSION=1.2 -o type=docker,dest=app.tar .
  kiln build --secret id=npm,src=$HOME/.npmrc -o type=local,dest=out/ .
  tar -c . | kiln build -o type=tar,dest=- - > rootfs.tar`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			bf.opts.ContextPath = args[0]
			bf.opts.Stdin = cmd.InOrStdin()
			bf.opts.Stdout = cmd.OutOrStdout()
			return runBuild(cmd.Context(), g, &bf, cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	o := &bf.opts
	f.StringVarP(&o.Dockerfile, "file", "f", "", "Dockerfile path (default PATH/Dockerfile)")
	f.StringArrayVarP(&o.Tags, "tag", "t", nil, "image name and tag (repeatable)")
	f.StringVar(&o.Target, "target", "", "build stage to build")
	f.StringArrayVar(&o.BuildArgs, "build-arg", nil, "build-time variable KEY=VALUE (repeatable)")
	f.StringArrayVar(&o.Labels, "label", nil, "image label KEY=VALUE (repeatable)")
	f.StringArrayVar(&o.Secrets, "secret", nil, "secret to expose: id=ID,src=PATH | id=ID,env=VAR (repeatable)")
	f.StringArrayVar(&o.SSH, "ssh", nil, "SSH agent socket or keys: default | ID=PATH (repeatable)")
	f.BoolVar(&o.NoCache, "no-cache", false, "do not use the cache")
	f.StringArrayVar(&o.NoCacheFilter, "no-cache-filter", nil, "do not cache these stages")
	f.StringArrayVar(&o.BuildContexts, "build-context", nil, "additional context NAME=PATH|docker-image://REF (repeatable)")
	f.StringVar(&o.Network, "network", "default", "network for RUN: default | none")
	f.StringVar(&o.Platform, "platform", "", "target platform, e.g. linux/amd64")
	f.StringArrayVarP(&o.Outputs, "output", "o", nil, "output: type=local|tar|oci|docker,dest=PATH")
	f.StringVar(&o.Progress, "progress", "auto", "progress output: auto | plain | tty | quiet | rawjson")
	f.StringVar(&bf.project, "project", "", "project id (env KILN_PROJECT_ID, DEPOT_PROJECT_ID, or kiln.json)")
	f.StringVar(&bf.iidfile, "iidfile", "", "write the image digest to this file")
	f.StringVar(&bf.metadata, "metadata-file", "", "write build result metadata (JSON) to this file")
	f.DurationVar(&bf.wait, "builder-wait", 3*time.Minute, "how long to wait for the builder to start")
	return cmd
}

func runBuild(ctx context.Context, g *globals, bf *buildFlags, stderr io.Writer) error {
	// Validate everything local before talking to the server.
	req, err := engine.Prepare(bf.opts)
	if err != nil {
		return err
	}
	defer req.Close()
	projectDir := bf.opts.ContextPath
	if projectDir == "-" {
		projectDir = "."
	}
	projectID, err := client.FindProject(bf.project, projectDir)
	if err != nil {
		return err
	}
	cfg, err := g.config()
	if err != nil {
		return err
	}
	api := cfg.Builds()

	var outputs []*cliv1.BuildOutput
	if t := req.OutputType(); t != "" {
		outputs = append(outputs, &cliv1.BuildOutput{Kind: t, Attributes: map[string]string{"dest": req.OutputDest()}})
	}
	created, err := retryUnavailable(ctx, func() (*connect.Response[cliv1.CreateBuildResponse], error) {
		return api.CreateBuild(ctx, connect.NewRequest(&cliv1.CreateBuildRequest{
			ProjectId: projectID,
			Options:   []*cliv1.BuildOptions{{Command: cliv1.Command_COMMAND_BUILD, Tags: req.Tags(), Outputs: outputs}},
		}))
	})
	if err != nil {
		return fmt.Errorf("create build in project %s: %w", projectID, err)
	}
	b := &remoteBuild{api: api, apiURL: cfg.APIURL, id: created.Msg.BuildId, token: created.Msg.BuildToken, platform: platformOf(req.Platform())}
	fmt.Fprintf(stderr, "kiln: build %s in project %s\n", b.id, projectID)

	solveErr := b.run(ctx, req, bf, stderr)
	b.finish(solveErr)
	if solveErr != nil {
		return solveErr
	}
	if bf.iidfile != "" {
		if err := engine.WriteIIDFile(bf.iidfile, b.resp); err != nil {
			return err
		}
	}
	if bf.metadata != "" {
		if err := engine.WriteMetadataFile(bf.metadata, b.resp); err != nil {
			return err
		}
	}
	if dest := req.OutputDest(); dest != "" && dest != "-" {
		fmt.Fprintf(stderr, "kiln: build %s finished: %s output written to %s\n", b.id, req.OutputType(), dest)
	} else {
		fmt.Fprintf(stderr, "kiln: build %s finished\n", b.id)
	}
	return nil
}

func platformOf(p string) cliv1.BuilderPlatform {
	if strings.Contains(p, "arm64") || strings.Contains(p, "aarch64") {
		return cliv1.BuilderPlatform_BUILDER_PLATFORM_ARM64
	}
	return cliv1.BuilderPlatform_BUILDER_PLATFORM_AMD64
}

// remoteBuild is one build's conversation with the kiln API.
type remoteBuild struct {
	api      cliv1connect.BuildServiceClient
	apiURL   string
	id       string
	token    string
	platform cliv1.BuilderPlatform
	steps    *engine.StepRecorder
	resp     *bkclient.SolveResponse
}

func (b *remoteBuild) run(ctx context.Context, req *engine.Request, bf *buildFlags, stderr io.Writer) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go b.reportHealth(ctx, cancel)

	c, err := b.dial(ctx, bf.wait, stderr)
	if err != nil {
		return err
	}
	defer c.Close()
	b.steps = engine.NewStepRecorder()
	status := startStatusReporter(b.apiURL, b.id, b.token)
	resp, err := engine.Solve(ctx, c, req, stderr, func(st *bkclient.SolveStatus) {
		b.steps.Observe(st)
		status.observe(st)
	})
	status.close()
	b.reportTimings()
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		return cause
	}
	if err != nil {
		return fmt.Errorf("build %s failed: %w", b.id, err)
	}
	b.resp = resp
	return nil
}

// dial connects to the project's builder. A builder that is unreachable
// before the solve starts (it is restarting after a crash, say) is asked
// for again with bounded backoff; once a solve starts it is never retried.
func (b *remoteBuild) dial(ctx context.Context, wait time.Duration, stderr io.Writer) (*bkclient.Client, error) {
	delay := 250 * time.Millisecond
	for attempt := 1; ; attempt++ {
		conn, err := b.connect(ctx, wait, stderr)
		if err != nil {
			return nil, err
		}
		c, err := engine.Dial(ctx, conn)
		if err == nil {
			return c, nil
		}
		if !errdefs.IsUnavailable(err) || attempt == 5 {
			return nil, fmt.Errorf("connect to builder %s: %w", conn.Endpoint, err)
		}
		select {
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		case <-time.After(delay):
		}
		delay *= 2
	}
}

// connect waits for the project's builder and returns its connection.
func (b *remoteBuild) connect(ctx context.Context, wait time.Duration, stderr io.Writer) (engine.Connection, error) {
	deadline := time.Now().Add(wait)
	announced := false
	for {
		res, err := retryUnavailable(ctx, func() (*connect.Response[cliv1.GetBuildKitConnectionResponse], error) {
			return b.api.GetBuildKitConnection(ctx, client.WithToken(connect.NewRequest(&cliv1.GetBuildKitConnectionRequest{BuildId: b.id, Platform: b.platform}), b.token))
		})
		if err != nil {
			return engine.Connection{}, fmt.Errorf("get builder connection: %w", err)
		}
		if a := res.Msg.GetActive(); a != nil {
			return engine.Connection{Endpoint: a.Endpoint, ServerName: a.ServerName, CertPEM: a.GetCert().GetCert(),
				KeyPEM: a.GetCert().GetKey(), CACertPEM: a.GetCaCert().GetCert()}, nil
		}
		if !announced {
			fmt.Fprintln(stderr, "kiln: waiting for the project's builder to start...")
			announced = true
		}
		if time.Now().After(deadline) {
			return engine.Connection{}, fmt.Errorf("builder did not start within %s (see the server log; raise --builder-wait)", wait)
		}
		waitMs := max(res.Msg.GetPending().GetWaitMs(), 50)
		select {
		case <-ctx.Done():
			return engine.Connection{}, context.Cause(ctx)
		case <-time.After(time.Duration(waitMs) * time.Millisecond):
		}
	}
}

// reportHealth keeps the build alive every 5 s; if the server says the
// build is over (cancels_at in the past), the solve is canceled.
func (b *remoteBuild) reportHealth(ctx context.Context, cancel context.CancelCauseFunc) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		res, err := b.api.ReportBuildHealth(ctx, client.WithToken(connect.NewRequest(&cliv1.ReportBuildHealthRequest{BuildId: b.id, Platform: b.platform}), b.token))
		if err != nil {
			continue // transient; the server tolerates missed reports up to its timeout
		}
		if at := res.Msg.GetCancelsAt(); at != nil && at.AsTime().Before(time.Now()) {
			cancel(fmt.Errorf("build %s was ended by the server (canceled or its builder was lost)", b.id))
			return
		}
	}
}

func (b *remoteBuild) reportTimings() {
	if b.steps == nil {
		return
	}
	var steps []*cliv1.BuildStep
	for _, s := range b.steps.Steps() {
		st := &cliv1.BuildStep{Name: s.Name, Cached: s.Cached, StableDigest: &s.Digest}
		if s.Started != nil {
			st.StartTime = timestamppb.New(*s.Started)
			if s.Completed != nil {
				st.DurationMs = int32(s.Completed.Sub(*s.Started).Milliseconds())
			}
		}
		if s.Error != "" {
			e := s.Error
			st.Error = &e
		}
		steps = append(steps, st)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, _ = b.api.ReportTimings(ctx, client.WithToken(connect.NewRequest(&cliv1.ReportTimingsRequest{BuildId: b.id, BuildSteps: steps}), b.token))
}

// finish tells the server how the build ended; it runs even if the user
// interrupted the build so the builder is released at once.
func (b *remoteBuild) finish(buildErr error) {
	req := &cliv1.FinishBuildRequest{BuildId: b.id, Result: &cliv1.FinishBuildRequest_Success{Success: &cliv1.FinishBuildRequest_BuildSuccess{}}}
	if buildErr != nil {
		if st, ok := grpcerrors.AsGRPCStatus(buildErr); errors.Is(buildErr, context.Canceled) || (ok && st.Code() == codes.Canceled) {
			req.Result = &cliv1.FinishBuildRequest_Canceled{Canceled: &cliv1.FinishBuildRequest_BuildCanceled{}}
		} else {
			req.Result = &cliv1.FinishBuildRequest_Error{Error: &cliv1.FinishBuildRequest_BuildError{Error: buildErr.Error()}}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	_, _ = retryUnavailable(ctx, func() (*connect.Response[cliv1.FinishBuildResponse], error) {
		return b.api.FinishBuild(ctx, client.WithToken(connect.NewRequest(req), b.token))
	})
}

// retryUnavailable retries calls that failed before reaching the server's
// logic (Unavailable) with bounded exponential backoff. Nothing else is
// retried: a call that did something is never silently repeated.
func retryUnavailable[T any](ctx context.Context, call func() (*connect.Response[T], error)) (*connect.Response[T], error) {
	delay := 200 * time.Millisecond
	for attempt := 1; ; attempt++ {
		res, err := call()
		if err == nil || connect.CodeOf(err) != connect.CodeUnavailable || attempt == 5 {
			return res, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(delay):
		}
		delay *= 2
	}
}
