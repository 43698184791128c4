package session

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	kilnv1 "github.com/kiln-dev/kiln/gen/kiln/v1"
	"github.com/kiln-dev/kiln/gen/kiln/v1/kilnv1connect"
	"github.com/kiln-dev/kiln/internal/client"
)

// builds answers GetBuild: running for the first calls, then failed with
// the fleet's reason.
type builds struct {
	kilnv1connect.UnimplementedSourceBuildServiceHandler
	calls       atomic.Int32
	runningFor  int32
	status      kilnv1.BuildStatus
	reason      string
	unavailable bool
}

func (b *builds) GetBuild(_ context.Context, req *connect.Request[kilnv1.GetBuildRequest]) (*connect.Response[kilnv1.GetBuildResponse], error) {
	n := b.calls.Add(1)
	if b.unavailable {
		return nil, connect.NewError(connect.CodeUnimplemented, nil)
	}
	st := b.status
	if n <= b.runningFor {
		st = kilnv1.BuildStatus_BUILD_STATUS_RUNNING
	}
	return connect.NewResponse(&kilnv1.GetBuildResponse{Build: &kilnv1.Build{BuildId: req.Msg.BuildId, Status: st, Error: b.reason}}), nil
}

func remoteFor(t *testing.T, b *builds) *Remote {
	mux := http.NewServeMux()
	mux.Handle(kilnv1connect.NewSourceBuildServiceHandler(b))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return &Remote{cfg: client.Config{APIURL: srv.URL, Token: "t"}, ID: "b1"}
}

// The client's error is the server's reason for a lost builder, even when
// the server records it a moment after the connection broke, and even if
// the health loop canceled the build's context meanwhile.
func TestExplainLossWaitsForTheServer(t *testing.T) {
	eof := status.Error(codes.Unavailable, "error reading from server: EOF")
	const reason = "the builder for project p (linux/amd64) crashed during the build (signal 9); retry the build"
	b := &builds{runningFor: 3, status: kilnv1.BuildStatus_BUILD_STATUS_FAILED, reason: reason}
	r := remoteFor(t, b)
	ctx, cancel := context.WithCancelCause(context.Background())
	go func() { time.Sleep(100 * time.Millisecond); cancel(errEndedForTest) }()
	err := r.explainLoss(ctx, eof)
	if err.Error() != reason {
		t.Fatalf("explainLoss = %v, want the server's reason", err)
	}
	if n := b.calls.Load(); n != 4 {
		t.Errorf("%d GetBuild calls, want 4", n)
	}

	// A build error that is not a lost connection asks nobody.
	other := status.Error(codes.Unknown, "exit code: 1")
	quiet := &builds{}
	if err := remoteFor(t, quiet).explainLoss(context.Background(), other); err != other || quiet.calls.Load() != 0 {
		t.Errorf("explainLoss(%v) = %v after %d calls", other, err, quiet.calls.Load())
	}
	// A server without kiln's API: the client's own error, at once.
	depot := &builds{unavailable: true}
	start := time.Now()
	if err := remoteFor(t, depot).explainLoss(context.Background(), eof); err != eof || time.Since(start) > 2*time.Second {
		t.Errorf("explainLoss against a server without GetBuild = %v after %s", err, time.Since(start))
	}
	// The user interrupted: no wait.
	interrupted, stop := context.WithCancel(context.Background())
	stop()
	if err := r.explainLoss(interrupted, eof); err != eof {
		t.Errorf("explainLoss after an interrupt = %v", err)
	}
}

var errEndedForTest = &endedError{}

type endedError struct{}

func (*endedError) Error() string { return "build b1 was ended by the server" }
