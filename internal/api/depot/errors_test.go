package depot

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"connectrpc.com/connect"

	"github.com/kiln-dev/kiln/internal/errdefs"
)

// Whatever a domain error says, a client never reads the server's data
// directory in it: the path is replaced, the code kept, and the whole
// error logged for the operator.
func TestToConnectRemovesServerPaths(t *testing.T) {
	data := t.TempDir()
	ctx := WithServerPaths(context.Background(), data)
	var log bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&log, nil))
	for _, tc := range []struct {
		err  error
		code connect.Code
		keep string // a part of the message the client still gets
	}{
		{fmt.Errorf("builder for project p failed to start; see %s/builders/p/amd64/buildkitd.log: %w", data, errdefs.ErrUnavailable), connect.CodeUnavailable, "failed to start; see "},
		{fmt.Errorf("write %s/blobs/x.tmp: no space left on device: %w", data, errdefs.ErrExhausted), connect.CodeResourceExhausted, ": no space left on device"},
		{connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("state in %q is locked", data+"/builders/p")), connect.CodeFailedPrecondition, "is locked"},
	} {
		got := ToConnect(ctx, logger, tc.err)
		msg := connect.CodeOf(got).String() + " " + got.Error()
		if strings.Contains(msg, data) || connect.CodeOf(got) != tc.code || !strings.Contains(msg, tc.keep) || !strings.Contains(msg, serverPathNote) {
			t.Errorf("ToConnect(%q) = %s; want code %v, %q kept and the path replaced", tc.err, msg, tc.code, tc.keep)
		}
	}
	if !strings.Contains(log.String(), data+"/builders/p/amd64/buildkitd.log") {
		t.Errorf("the whole error is not in the server log:\n%s", log.String())
	}

	// Paths that are not the server's stay: a client's own, an image's,
	// and a name that only starts like the data directory.
	for _, msg := range []string{
		"archive entry /etc/passwd escapes the context",
		"Dockerfile not found at /home/dev/app/Dockerfile",
		"see " + data + "2/x",
	} {
		got := ToConnect(ctx, logger, fmt.Errorf("%s: %w", msg, errdefs.ErrInvalid))
		if !strings.Contains(got.Error(), msg) {
			t.Errorf("ToConnect(%q) = %q; want it unchanged", msg, got)
		}
	}
	// Without server paths in the context nothing changes.
	err := errors.New("plain")
	if got := Redact(context.Background(), logger, err); got != err {
		t.Errorf("Redact without paths changed %v to %v", err, got)
	}
}
