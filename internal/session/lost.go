package session

import (
	"context"
	"errors"
	"time"

	"connectrpc.com/connect"
	"github.com/moby/buildkit/util/grpcerrors"
	"google.golang.org/grpc/codes"

	kilnv1 "github.com/kiln-dev/kiln/gen/kiln/v1"
	"github.com/kiln-dev/kiln/internal/errdefs"
)

// When a builder dies, stops responding or is taken from the build, the
// client sees only its connection break ("Unavailable … error reading from
// server: EOF"). kiln's server knows why: the fleet fails the builds of a
// builder it lost with the reason, in the user's terms, moments later. So a
// solve that lost its builder asks the server how it recorded the build
// before saying anything, and the client and the record say the same.

// verdictWait bounds how long a client whose builder connection broke
// waits for the server to record why; the fleet does within a second or
// two of a crash (after cleaning up the builder's processes).
const verdictWait = 10 * time.Second

// verdictPoll is how often the server is asked meanwhile.
const verdictPoll = 250 * time.Millisecond

// builderLost reports whether a solve error is a builder connection that
// broke (as opposed to the build failing on it).
func builderLost(err error) bool {
	return err != nil && grpcerrors.Code(err) == codes.Unavailable
}

// explainLoss returns the server's reason for ending build r when
// solveErr says its builder connection broke and the server ends the build
// within verdictWait; otherwise solveErr.
func (r *Remote) explainLoss(ctx context.Context, solveErr error) error {
	if !builderLost(solveErr) || r.cfg.APIURL == "" {
		return solveErr
	}
	if cause := context.Cause(ctx); errors.Is(cause, context.Canceled) {
		return solveErr // the user interrupted the build
	}
	// Not canceled with the build's context: the health loop cancels that
	// as soon as the server ended the build (its token stops working),
	// which is just when the answer is there to read.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), verdictWait)
	defer cancel()
	api := r.cfg.SourceBuilds()
	for {
		res, err := api.GetBuild(ctx, connect.NewRequest(&kilnv1.GetBuildRequest{BuildId: r.ID}))
		if err == nil {
			b := res.Msg.GetBuild()
			switch b.GetStatus() {
			case kilnv1.BuildStatus_BUILD_STATUS_FAILED, kilnv1.BuildStatus_BUILD_STATUS_CANCELED:
				if b.GetError() != "" {
					return &lostError{msg: b.GetError(), cause: solveErr}
				}
				return solveErr
			case kilnv1.BuildStatus_BUILD_STATUS_SUCCEEDED:
				return solveErr
			}
		} else if code := connect.CodeOf(err); code != connect.CodeUnavailable && code != connect.CodeDeadlineExceeded && code != connect.CodeUnknown {
			// A server without kiln's API, or a token that may not read the
			// build: nobody to ask.
			return solveErr
		}
		t := time.NewTimer(verdictPoll)
		select {
		case <-ctx.Done():
			t.Stop()
			return solveErr
		case <-t.C:
		}
	}
}

// lostError is the server's account of a lost builder: its text is the
// server's reason alone; the broken connection stays reachable with
// errors.Is/As, and its kind is unavailable (retrying may work).
type lostError struct {
	msg   string
	cause error
}

func (e *lostError) Error() string { return e.msg }

func (e *lostError) Unwrap() []error { return []error{errdefs.ErrUnavailable, e.cause} }
