package session

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"connectrpc.com/connect"
	cliv1 "github.com/depot/depot-go/proto/depot/cli/v1"
	"github.com/depot/depot-go/proto/depot/cli/v1/cliv1connect"
	bkclient "github.com/moby/buildkit/client"
	"github.com/moby/buildkit/util/grpcerrors"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/timestamppb"

	kilnv1 "github.com/kiln-dev/kiln/gen/kiln/v1"
	"github.com/kiln-dev/kiln/internal/client"
	"github.com/kiln-dev/kiln/internal/engine"
	"github.com/kiln-dev/kiln/internal/platform"
	"github.com/kiln-dev/kiln/internal/retry"
	"github.com/kiln-dev/kiln/internal/steps"
	"github.com/kiln-dev/kiln/internal/ticker"
)

// Remote is a build created through kiln's API (Depot's BuildService), as
// `kiln build`, `kiln bake` and the Go SDK run them: the client solves on
// the project's builders, keeps the build alive, streams its status and
// reports how it ended.
type Remote struct {
	api    cliv1connect.BuildServiceClient
	apiURL string
	cfg    client.Config // the caller's, to ask why a build ended (lost.go)
	// ID and Token are the build's id and its build token.
	ID, Token string
	// URL is the build's URL (CreateBuild's build_url), or "".
	URL string
	// SaveRefs and SaveCreds are where the server saves the build's image
	// in its registry and the credentials to push there (CreateBuild's
	// additional tags and credentials), when the build asked to be saved.
	SaveRefs  []string
	SaveCreds []engine.RegistryCredential
	// messages is where Run's RunOptions.Messages went (nil: nowhere);
	// Finish says there that it is waiting for the server.
	messages io.Writer
}

// Create creates a build in projectID holding opts (one entry per bake
// target, one for a plain build). A call that got no answer is retried
// ([retry.API]).
func Create(ctx context.Context, cfg client.Config, projectID string, opts ...*cliv1.BuildOptions) (*Remote, error) {
	api := cfg.Builds()
	res, err := retry.Value(ctx, retry.API, func(ctx context.Context) (*connect.Response[cliv1.CreateBuildResponse], error) {
		return api.CreateBuild(ctx, connect.NewRequest(&cliv1.CreateBuildRequest{ProjectId: projectID, Options: opts}))
	})
	if err != nil {
		return nil, fmt.Errorf("create build in project %s: %w", projectID, err)
	}
	r := &Remote{api: api, apiURL: cfg.APIURL, cfg: cfg, ID: res.Msg.BuildId, Token: res.Msg.BuildToken, URL: res.Msg.BuildUrl}
	for _, t := range res.Msg.GetAdditionalTags() {
		if t.GetPush() {
			r.SaveRefs = append(r.SaveRefs, t.GetTag())
		}
	}
	for _, c := range res.Msg.GetAdditionalCredentials() {
		cred, err := engine.DecodeRegistryCredential(c.GetHost(), c.GetToken())
		if err != nil {
			r.Finish(context.Canceled)
			return nil, fmt.Errorf("--save: the server's %w", err)
		}
		r.SaveCreds = append(r.SaveCreds, cred)
	}
	return r, nil
}

// Acquire asks the API for the build's builder of platform b
// (GetBuildKitConnection).
func (r *Remote) Acquire(ctx context.Context, b platform.Platform) (Lease, error) {
	req := &cliv1.GetBuildKitConnectionRequest{BuildId: r.ID, Platform: builderEnum(b)}
	res, err := retry.Value(ctx, retry.API, func(ctx context.Context) (*connect.Response[cliv1.GetBuildKitConnectionResponse], error) {
		return r.api.GetBuildKitConnection(ctx, client.WithToken(connect.NewRequest(req), r.Token))
	})
	if err != nil {
		return Lease{}, fmt.Errorf("get builder connection: %w", err)
	}
	if a := res.Msg.GetActive(); a != nil {
		return Lease{Ready: true, Conn: engine.Connection{Endpoint: a.Endpoint, ServerName: a.ServerName,
			CertPEM: a.GetCert().GetCert(), KeyPEM: a.GetCert().GetKey(), CACertPEM: a.GetCaCert().GetCert()}}, nil
	}
	return Lease{Wait: time.Duration(res.Msg.GetPending().GetWaitMs()) * time.Millisecond}, nil
}

// builderEnum is the GetBuildKitConnection platform of builder b.
func builderEnum(b platform.Platform) cliv1.BuilderPlatform {
	if b == platform.ARM64 {
		return cliv1.BuilderPlatform_BUILDER_PLATFORM_ARM64
	}
	return cliv1.BuilderPlatform_BUILDER_PLATFORM_AMD64
}

// RunOptions tune [Remote.Run].
type RunOptions struct {
	// Wait bounds how long a builder may take to start.
	Wait time.Duration
	// Messages receives kiln's own lines ("kiln: waiting for the
	// project's builder to start...") and what the engine prints.
	Messages io.Writer
	// Tap, when set, sees each status first and returns the status to
	// record and report in its place, or nil to drop it (kiln bake names
	// the target in every step and feeds its shared display).
	Tap func(*bkclient.SolveStatus) *bkclient.SolveStatus
}

// Run solves req on the build's builders — one, or one per builder
// platform for a multi-platform build — while keeping the build alive,
// streaming its status to the server and recording its steps, which are
// reported when the solve ends. If the server ends the build, the solve is
// canceled and that is the error.
func (r *Remote) Run(ctx context.Context, req *engine.Request, o RunOptions) (*bkclient.SolveResponse, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go r.keepAlive(ctx, cancel)

	msgs := o.Messages
	if msgs == nil {
		msgs = io.Discard
	}
	r.messages = msgs
	announced := false
	bs, err := Connect(ctx, r, req.BuilderPlatforms(), ConnectOptions{Wait: o.Wait, Hint: "see the server log; raise --builder-wait",
		Waiting: func(platform.Platform) {
			if !announced {
				announced = true
				fmt.Fprintln(msgs, "kiln: waiting for the project's builder to start...")
			}
		}})
	if err != nil {
		return nil, err
	}
	defer bs.Close()
	if req.MultiPlatform() {
		fmt.Fprintf(msgs, "kiln: building %s\n", describePlan(req))
	}

	rec := steps.NewRecorder(false)
	status := startStatusStream(r.apiURL, r.ID, r.Token)
	resp, err := Solve(ctx, bs, req, msgs, func(st *bkclient.SolveStatus) {
		if o.Tap != nil {
			if st = o.Tap(st); st == nil {
				return
			}
		}
		rec.Observe(st)
		status.observe(st)
	})
	status.close()
	r.reportTimings(rec.Steps())
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		return nil, cause
	}
	if c := req.GitCommit(); c != "" {
		r.recordGitCommit(c, msgs) // also when the build failed: the commit that failed
	}
	if err != nil {
		return nil, fmt.Errorf("build %s failed: %w", r.ID, r.explainLoss(ctx, err))
	}
	return resp, nil
}

// recordGitCommit records on the build the git commit it was pinned to
// (RecordGitCommit), best effort: a failure is a warning.
func (r *Remote) recordGitCommit(commit string, msgs io.Writer) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req := client.WithToken(connect.NewRequest(&kilnv1.RecordGitCommitRequest{BuildId: r.ID, GitCommit: commit}), r.Token)
	if _, err := r.cfg.SourceBuilds().RecordGitCommit(ctx, req); err != nil {
		fmt.Fprintf(msgs, "kiln: warning: recording git commit %s on build %s: %v\n", commit, r.ID, err)
	}
}

// describePlan says which builder builds each platform.
func describePlan(req *engine.Request) string {
	s := ""
	for i, p := range req.Platforms() {
		if i > 0 {
			s += ", "
		}
		s += p.String() + " on the " + req.BuilderPlatform(p).String() + " builder"
	}
	return s
}

// keepAlive reports the build's health every 5 s; if the server says the
// build is over (cancels_at in the past, or the build token stopped
// working because the build ended), the solve is canceled. Missed reports
// are tolerated by the server up to its timeout.
func (r *Remote) keepAlive(ctx context.Context, cancel context.CancelCauseFunc) {
	ticker.Run(ctx.Done(), 5*time.Second, func(time.Time, time.Duration) {
		res, err := r.api.ReportBuildHealth(ctx, client.WithToken(connect.NewRequest(&cliv1.ReportBuildHealthRequest{BuildId: r.ID}), r.Token))
		// A build token works only while its build runs.
		ended := connect.CodeOf(err) == connect.CodeUnauthenticated ||
			err == nil && res.Msg.GetCancelsAt() != nil && res.Msg.GetCancelsAt().AsTime().Before(time.Now())
		if ended {
			cancel(fmt.Errorf("build %s was ended by the server", r.ID)) // and ctx is done: the loop ends
		}
	})
}

// reportTimings sends the build's steps (ReportTimings), best effort.
func (r *Remote) reportTimings(recorded []steps.Step) {
	var out []*cliv1.BuildStep
	for _, s := range recorded {
		st := &cliv1.BuildStep{Name: s.Name, Cached: s.Cached, StableDigest: &s.Digest}
		if !s.Started.IsZero() {
			st.StartTime = timestamppb.New(s.Started)
			if !s.Completed.IsZero() {
				st.DurationMs = int32(s.Completed.Sub(s.Started).Milliseconds())
			}
		}
		if s.Error != "" {
			e := s.Error
			st.Error = &e
		}
		out = append(out, st)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, _ = r.api.ReportTimings(ctx, client.WithToken(connect.NewRequest(&cliv1.ReportTimingsRequest{BuildId: r.ID, BuildSteps: out}), r.Token))
}

// finishTimeout bounds Finish, its retries included (retry.Report tries
// for about 30 s; a stopped server may hold a try until this).
const finishTimeout = time.Minute

// Finish tells the server how the build ended (nil: success; a
// cancellation: canceled). Call it even when the user interrupted the
// build, so the builder is released at once. A server that is restarting
// is waited for (retry.Report). It returns nil once the server recorded
// that outcome (or had already: Finish is idempotent); an [*UnrecordedError]
// when the server had already ended the build otherwise (it canceled or
// failed it: the health timeout, a lost builder, a restart) or could not be
// reached. A caller whose build succeeded must then fail too: the exit
// code follows what kiln recorded.
func (r *Remote) Finish(buildErr error) error {
	req := &cliv1.FinishBuildRequest{BuildId: r.ID, Result: &cliv1.FinishBuildRequest_Success{Success: &cliv1.FinishBuildRequest_BuildSuccess{}}}
	if buildErr != nil {
		if st, ok := grpcerrors.AsGRPCStatus(buildErr); errors.Is(buildErr, context.Canceled) || (ok && st.Code() == codes.Canceled) {
			req.Result = &cliv1.FinishBuildRequest_Canceled{Canceled: &cliv1.FinishBuildRequest_BuildCanceled{}}
		} else {
			req.Result = &cliv1.FinishBuildRequest_Error{Error: &cliv1.FinishBuildRequest_BuildError{Error: buildErr.Error()}}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), finishTimeout)
	defer cancel()
	tries := 0
	err := retry.Do(ctx, retry.Report, func(ctx context.Context) error {
		if tries++; tries == 2 && r.messages != nil {
			fmt.Fprintf(r.messages, "kiln: kiln serve did not answer; trying for about 30s to record how build %s ended...\n", r.ID)
		}
		_, err := r.api.FinishBuild(ctx, client.WithToken(connect.NewRequest(req), r.Token))
		if connect.CodeOf(err) == connect.CodeUnauthenticated {
			// The build token stopped working because the build ended:
			// the server ended it, or recorded an earlier try of this
			// call whose answer was lost. Report with the caller's own
			// credentials, so the server records the result (a failure it
			// only presumed when it restarted gives way to success) or
			// says how it recorded the build.
			_, err = r.api.FinishBuild(ctx, connect.NewRequest(req))
		}
		return err
	})
	if err == nil {
		return nil
	}
	e := &UnrecordedError{BuildID: r.ID, Err: err}
	var ce *connect.Error
	if connect.CodeOf(err) == connect.CodeFailedPrecondition && errors.As(err, &ce) {
		e.Recorded = ce.Message()
	}
	return e
}

// UnrecordedError is a build's result that kiln did not record: it had
// already ended the build otherwise (Recorded says how, in the server's
// words), or it could not be reached. It is a complete message and does
// not unwrap to the API error (Err), which the CLI would print alone.
type UnrecordedError struct {
	BuildID  string
	Recorded string // "" when the server could not be reached
	Err      error  // FinishBuild's last error
}

func (e *UnrecordedError) Error() string {
	if e.Recorded != "" {
		return fmt.Sprintf("kiln did not record how build %s ended here: %s", e.BuildID, e.Recorded)
	}
	return fmt.Sprintf("could not tell kiln how build %s ended (%v); kiln will cancel the build when its health timeout passes", e.BuildID, e.Err)
}
