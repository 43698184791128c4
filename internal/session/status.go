package session

import (
	"context"
	"net/http"
	"time"

	"connectrpc.com/connect"
	controlapi "github.com/moby/buildkit/api/services/control"
	bkclient "github.com/moby/buildkit/client"

	cliv1extra "github.com/kiln-dev/kiln/gen/depot/cli/v1"
)

// statusStream streams a build's BuildKit status to the server
// (depot.cli.v1.BuildService/ReportStatusStream, as the depot CLI does) so
// steps and their logs are stored. It is best effort: it never slows or
// fails the build; if the server lags, updates beyond the buffer are dropped.
type statusStream struct {
	ch   chan *bkclient.SolveStatus
	done chan struct{}
}

const statusProcedure = "/depot.cli.v1.BuildService/ReportStatusStream"

// statusKeepalive: with nothing to report for this long (a RUN step that
// prints nothing), an empty update is sent, so the server, which drops
// client streams silent for --stream-body-timeout (10m), keeps the stream.
const statusKeepalive = time.Minute

func startStatusStream(apiURL, buildID, token string) *statusStream {
	r := &statusStream{ch: make(chan *bkclient.SolveStatus, 4096), done: make(chan struct{})}
	c := connect.NewClient[cliv1extra.ReportStatusStreamRequest, cliv1extra.ReportStatusStreamResponse](http.DefaultClient, apiURL+statusProcedure)
	go func() {
		defer close(r.done)
		// The stream outlives the solve by at most the final flush.
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		stream := c.CallClientStream(ctx)
		stream.RequestHeader().Set("Authorization", "Bearer "+token)
		tick := time.NewTicker(500 * time.Millisecond)
		defer tick.Stop()
		var batch []*controlapi.StatusResponse
		lastSent := time.Now()
		flush := func() bool {
			if len(batch) == 0 && time.Since(lastSent) < statusKeepalive {
				return true
			}
			err := stream.Send(&cliv1extra.ReportStatusStreamRequest{BuildId: buildID, Statuses: batch})
			batch, lastSent = nil, time.Now()
			return err == nil
		}
		ok := true
		for ok {
			select {
			case st, more := <-r.ch:
				if !more {
					flush()
					stream.CloseAndReceive()
					return
				}
				batch = append(batch, st.Marshal()...)
			case <-tick.C:
				ok = flush()
			}
		}
		// The server went away: drain so the build never blocks.
		for range r.ch {
		}
		stream.CloseAndReceive()
	}()
	return r
}

func (r *statusStream) observe(st *bkclient.SolveStatus) {
	select {
	case r.ch <- st:
	default:
	}
}

// close flushes what is buffered and ends the stream (bounded wait).
func (r *statusStream) close() {
	close(r.ch)
	select {
	case <-r.done:
	case <-time.After(10 * time.Second):
	}
}
