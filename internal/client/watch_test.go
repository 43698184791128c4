package client_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"connectrpc.com/connect"

	kilnv1 "github.com/kiln-dev/kiln/gen/kiln/v1"
	"github.com/kiln-dev/kiln/gen/kiln/v1/kilnv1connect"
	"github.com/kiln-dev/kiln/internal/client"
)

// crashingWatch replays a build's events as kiln does; its first stream
// dies after two lines the way a killed server's does: the connection
// ends in the middle of the response.
type crashingWatch struct {
	kilnv1connect.UnimplementedSourceBuildServiceHandler
	calls atomic.Int32
}

func logEvent(seq int64, msg string) *kilnv1.WatchBuildResponse {
	return &kilnv1.WatchBuildResponse{Event: &kilnv1.WatchBuildResponse_Log{Log: &kilnv1.LogLine{Digest: "d", Message: msg, Seq: seq}}}
}

func buildEvent(st kilnv1.BuildStatus) *kilnv1.WatchBuildResponse {
	return &kilnv1.WatchBuildResponse{Event: &kilnv1.WatchBuildResponse_Build{Build: &kilnv1.Build{BuildId: "b1", Status: st}}}
}

func (h *crashingWatch) WatchBuild(ctx context.Context, req *connect.Request[kilnv1.WatchBuildRequest], stream *connect.ServerStream[kilnv1.WatchBuildResponse]) error {
	n := h.calls.Add(1)
	events := []*kilnv1.WatchBuildResponse{buildEvent(kilnv1.BuildStatus_BUILD_STATUS_RUNNING), logEvent(1, "one"), logEvent(2, "two")}
	if n > 1 {
		events = append(events, logEvent(3, "three"), buildEvent(kilnv1.BuildStatus_BUILD_STATUS_SUCCEEDED))
	}
	for _, ev := range events {
		if err := stream.Send(ev); err != nil {
			return err
		}
	}
	if n == 1 {
		// What the client sees of a kill -9: the response stops without
		// its end (here: the handler aborts, the connection is closed).
		panic(http.ErrAbortHandler)
	}
	return nil
}

// A followed stream cut off mid-response (the server was killed) is
// reopened, and the replay's lines already taken in are skipped: the
// output resumes after the last sequence number.
func TestWatchBuildResumesAfterStreamCutOff(t *testing.T) {
	h := &crashingWatch{}
	mux := http.NewServeMux()
	mux.Handle(kilnv1connect.NewSourceBuildServiceHandler(h))
	srv := httptest.NewServer(mux)
	defer srv.Close()
	api := kilnv1connect.NewSourceBuildServiceClient(srv.Client(), srv.URL)

	var lastSeq int64
	var lines []string
	last, err := client.WatchBuild(t.Context(), api, "b1", true, func(ev *kilnv1.WatchBuildResponse) (bool, error) {
		if l := ev.GetLog(); l != nil {
			if l.Seq <= lastSeq {
				return false, nil
			}
			lastSeq = l.Seq
			lines = append(lines, l.Message)
			return true, nil
		}
		return ev.GetBuild() != nil, nil
	})
	if err != nil {
		t.Fatalf("WatchBuild: %v (a stream cut off mid-response must be reopened)", err)
	}
	if h.calls.Load() != 2 {
		t.Errorf("streams opened: %d, want 2", h.calls.Load())
	}
	if last.GetStatus() != kilnv1.BuildStatus_BUILD_STATUS_SUCCEEDED {
		t.Errorf("last status %v, want succeeded", last.GetStatus())
	}
	if got := len(lines); got != 3 || lines[0] != "one" || lines[2] != "three" {
		t.Errorf("lines %q, want one, two, three once each", lines)
	}
}
