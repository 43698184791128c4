package session

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"connectrpc.com/connect"
	cliv1 "github.com/depot/depot-go/proto/depot/cli/v1"
	"github.com/depot/depot-go/proto/depot/cli/v1/cliv1connect"

	"github.com/kiln-dev/kiln/internal/client"
)

// finisher is a FinishBuild server as kiln answers it: it is down for the
// first `down` calls, a build token is refused once the build ended, and
// a result different from the recorded one is FailedPrecondition.
type finisher struct {
	cliv1connect.UnimplementedBuildServiceHandler
	mu       sync.Mutex
	down     int
	ended    bool   // the build token no longer works
	recorded string // "" accepts any result; else the refusal's message
	tokens   []string
}

func (f *finisher) FinishBuild(_ context.Context, req *connect.Request[cliv1.FinishBuildRequest]) (*connect.Response[cliv1.FinishBuildResponse], error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	tok := strings.TrimPrefix(req.Header().Get("Authorization"), "Bearer ")
	f.tokens = append(f.tokens, tok)
	switch {
	case f.down > 0:
		f.down--
		return nil, connect.NewError(connect.CodeUnavailable, errors.New("kiln serve is starting"))
	case f.ended && tok == "build-token":
		return nil, connect.NewError(connect.CodeUnauthenticated, errors.New("this build token's build has ended"))
	case f.recorded != "":
		return nil, connect.NewError(connect.CodeFailedPrecondition, errors.New(f.recorded))
	}
	return connect.NewResponse(&cliv1.FinishBuildResponse{}), nil
}

func newFinishRemote(t *testing.T, f *finisher) *Remote {
	t.Helper()
	mux := http.NewServeMux()
	mux.Handle(cliv1connect.NewBuildServiceHandler(f))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	cfg := client.Config{APIURL: srv.URL, Token: "user-token"}
	return &Remote{api: cfg.Builds(), apiURL: srv.URL, ID: "b1", Token: "build-token"}
}

// A server that is restarting is waited for; a build it ended meanwhile
// (its build token is dead) is finished with the user's own token, which
// lets the server record the client's result.
func TestFinishWaitsForRestartAndFallsBackToOwnToken(t *testing.T) {
	f := &finisher{down: 2, ended: true}
	r := newFinishRemote(t, f)
	var msgs strings.Builder
	r.messages = &msgs
	if err := r.Finish(nil); err != nil {
		t.Fatalf("Finish: %v", err)
	}
	if !strings.Contains(msgs.String(), "trying for about 30s to record how build b1 ended") {
		t.Errorf("the user was not told why kiln waits: %q", msgs.String())
	}
	want := []string{"build-token", "build-token", "build-token", "user-token"}
	if strings.Join(f.tokens, ",") != strings.Join(want, ",") {
		t.Errorf("FinishBuild calls with tokens %v, want %v", f.tokens, want)
	}
}

// A build the server had already ended otherwise is an UnrecordedError
// saying how it was recorded: the caller must not report success.
func TestFinishSaysHowTheServerRecordedTheBuild(t *testing.T) {
	f := &finisher{ended: true, recorded: `build "b1" had already ended as canceled: no health report`}
	r := newFinishRemote(t, f)
	err := r.Finish(nil)
	var u *UnrecordedError
	if !errors.As(err, &u) || !strings.Contains(u.Recorded, "had already ended as canceled: no health report") {
		t.Fatalf("Finish = %v; want an UnrecordedError with the recorded outcome", err)
	}
	if !strings.Contains(err.Error(), "kiln did not record how build b1 ended here") {
		t.Errorf("message %q", err)
	}
}
