package retry_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	cliv1 "github.com/depot/depot-go/proto/depot/cli/v1"
	"github.com/depot/depot-go/proto/depot/cli/v1/cliv1connect"

	"github.com/kiln-dev/kiln/internal/retry"
)

type createOnly struct {
	cliv1connect.UnimplementedBuildServiceHandler
	calls atomic.Int32
}

func (h *createOnly) CreateBuild(context.Context, *connect.Request[cliv1.CreateBuildRequest]) (*connect.Response[cliv1.CreateBuildResponse], error) {
	h.calls.Add(1)
	return connect.NewResponse(&cliv1.CreateBuildResponse{BuildId: "b1"}), nil
}

// resetFirst resets (RST, not FIN) the first n connections before any
// request is read, as a server that is restarting or a proxy dropping
// connections does.
func resetFirst(n int32, next http.Handler) http.Handler {
	var seen atomic.Int32
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if seen.Add(1) <= n {
			conn, _, err := http.NewResponseController(w).Hijack()
			if err == nil {
				if tc, ok := conn.(*net.TCPConn); ok {
					tc.SetLinger(0)
				}
				conn.Close()
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// A connection reset before the server answered is retried with backoff;
// the call succeeds once the server is back, and the handler ran once.
func TestRetryOnConnectionReset(t *testing.T) {
	h := &createOnly{}
	_, handler := cliv1connect.NewBuildServiceHandler(h)
	srv := httptest.NewServer(resetFirst(2, handler))
	defer srv.Close()
	// No keep-alive reuse: every attempt dials a new connection.
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	api := cliv1connect.NewBuildServiceClient(hc, srv.URL)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	res, err := retry.Value(ctx, retry.API, func(ctx context.Context) (*connect.Response[cliv1.CreateBuildResponse], error) {
		return api.CreateBuild(ctx, connect.NewRequest(&cliv1.CreateBuildRequest{ProjectId: "p"}))
	})
	if err != nil {
		t.Fatalf("CreateBuild after two resets: %v", err)
	}
	if res.Msg.BuildId != "b1" || h.calls.Load() != 1 {
		t.Errorf("build %q, handler ran %d times", res.Msg.BuildId, h.calls.Load())
	}
}

// Retries are bounded, and errors the server answered are not retried.
func TestRetryIsBounded(t *testing.T) {
	ctx := context.Background()
	var n int
	_, err := retry.Value(ctx, retry.API, func(ctx context.Context) (*connect.Response[cliv1.CreateBuildResponse], error) {
		n++
		return nil, connect.NewError(connect.CodeUnavailable, errors.New("down"))
	})
	if err == nil || n != 5 {
		t.Errorf("unavailable: %d attempts, err %v", n, err)
	}
	n = 0
	_, err = retry.Value(ctx, retry.API, func(ctx context.Context) (*connect.Response[cliv1.CreateBuildResponse], error) {
		n++
		return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("bad"))
	})
	if err == nil || n != 1 {
		t.Errorf("invalid argument: %d attempts, err %v", n, err)
	}
	for _, e := range []error{
		connect.NewError(connect.CodeUnknown, &net.OpError{Op: "read", Err: syscall.ECONNRESET}),
		connect.NewError(connect.CodeUnavailable, errors.New("x")),
	} {
		if !retry.Transient(e) {
			t.Errorf("Transient(%v) = false", e)
		}
	}
	for _, e := range []error{connect.NewError(connect.CodeInternal, errors.New("x")), context.Canceled, errors.New("connection reset by peer")} {
		if retry.Transient(e) {
			t.Errorf("Transient(%v) = true", e)
		}
	}
}

// cutOff sends the response's headers and a few bytes of its body, then
// drops the connection, as a server killed mid-answer does.
func cutOff(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/proto")
	w.Header().Set("Content-Length", "100")
	w.WriteHeader(http.StatusOK)
	w.Write([]byte{1, 2, 3})
	http.NewResponseController(w).Flush()
	panic(http.ErrAbortHandler)
}

// An answer cut off in the middle is not Transient (the server may have
// acted on the call, so API calls are not repeated) but is Repeatable, the
// policy of idempotent calls such as FinishBuild.
func TestAnswerCutOffIsRepeatableNotTransient(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(cutOff))
	defer srv.Close()
	api := cliv1connect.NewBuildServiceClient(srv.Client(), srv.URL)
	_, err := api.FinishBuild(t.Context(), connect.NewRequest(&cliv1.FinishBuildRequest{BuildId: "b1"}))
	if err == nil {
		t.Fatal("FinishBuild over a cut-off answer succeeded")
	}
	if retry.Transient(err) || !retry.Interrupted(err) || !retry.Repeatable(err) {
		t.Errorf("%v: Transient %v, Interrupted %v, Repeatable %v; want false, true, true",
			err, retry.Transient(err), retry.Interrupted(err), retry.Repeatable(err))
	}
	if retry.Repeatable(connect.NewError(connect.CodeFailedPrecondition, errors.New("already ended"))) {
		t.Error("an answered FailedPrecondition is Repeatable")
	}
}
