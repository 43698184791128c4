package client

import (
	"context"
	"errors"

	"connectrpc.com/connect"

	kilnv1 "github.com/kiln-dev/kiln/gen/kiln/v1"
	"github.com/kiln-dev/kiln/gen/kiln/v1/kilnv1connect"
	"github.com/kiln-dev/kiln/internal/retry"
)

// ErrStreamEnded is a followed event stream that ended, without an error,
// before its build did.
var ErrStreamEnded = errors.New("the event stream ended before the build did")

// followPolicy bounds reopening a followed build's event stream
// (retry.Follow: about 30 s, long enough for the server to come back after
// a crash). A stream that delivered something new starts the count afresh.
var followPolicy = retry.Follow

// WatchBuild reads source build id's events (WatchBuild) into handle,
// which says whether an event is new to it — every stream replays what the
// server recorded, so handle must take each event in once — or fails the
// watch with an error. Without follow
// it reads the recorded events once. Following, it returns when the build
// has ended; a stream that breaks (the server restarted or was killed
// mid-message, the connection reset) or ends early is opened again under
// followPolicy, and handle skips what the replay repeats (log lines by
// their sequence number), so the output resumes where it stopped. It
// returns the build's last status.
func WatchBuild(ctx context.Context, api kilnv1connect.SourceBuildServiceClient, id string, follow bool, handle func(*kilnv1.WatchBuildResponse) (bool, error)) (*kilnv1.Build, error) {
	var last *kilnv1.Build
	// A stream replays, so reopening after an answer cut off in the middle
	// (retry.Repeatable) repeats nothing.
	reopen := func(err error) bool { return follow && (errors.Is(err, ErrStreamEnded) || retry.Repeatable(err)) }
	for {
		progressed := false
		policy := followPolicy
		policy.Retryable = func(err error) bool { return !progressed && reopen(err) }
		err := retry.Do(ctx, policy, func(ctx context.Context) error {
			stream, err := api.WatchBuild(ctx, connect.NewRequest(&kilnv1.WatchBuildRequest{BuildId: id, NoFollow: !follow}))
			if err != nil {
				return err
			}
			defer stream.Close()
			for stream.Receive() {
				if b := stream.Msg().GetBuild(); b != nil {
					last = b
				}
				news, err := handle(stream.Msg())
				if err != nil {
					return err
				}
				progressed = progressed || news
			}
			if err := stream.Err(); err != nil {
				return err
			}
			if follow && (last == nil || !Ended(last.Status)) {
				return ErrStreamEnded
			}
			return nil
		})
		if err != nil && reopen(err) && progressed && ctx.Err() == nil {
			continue // something new arrived: the tries start afresh
		}
		if err != nil && reopen(err) && ctx.Err() != nil {
			return last, context.Cause(ctx)
		}
		return last, err
	}
}

// Ended reports whether a build status is final.
func Ended(s kilnv1.BuildStatus) bool {
	switch s {
	case kilnv1.BuildStatus_BUILD_STATUS_SUCCEEDED, kilnv1.BuildStatus_BUILD_STATUS_FAILED, kilnv1.BuildStatus_BUILD_STATUS_CANCELED:
		return true
	}
	return false
}
