package kiln

import (
	"context"
	"errors"
	"log/slog"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	kilnv1 "github.com/kiln-dev/kiln/gen/kiln/v1"
	"github.com/kiln-dev/kiln/gen/kiln/v1/kilnv1connect"
	"github.com/kiln-dev/kiln/internal/api/depot"
	"github.com/kiln-dev/kiln/internal/audit"
)

// AuditService serves kiln.v1.AuditService (`kiln audit`).
type AuditService struct {
	Audit  *audit.Recorder
	Logger *slog.Logger
}

var _ kilnv1connect.AuditServiceHandler = (*AuditService)(nil)

func (s *AuditService) ListAuditEvents(ctx context.Context, req *connect.Request[kilnv1.ListAuditEventsRequest]) (*connect.Response[kilnv1.ListAuditEventsResponse], error) {
	p, err := depot.Caller(ctx)
	if err != nil {
		return nil, err
	}
	q := audit.Query{Kinds: req.Msg.Kinds, PageSize: int(req.Msg.PageSize), PageToken: req.Msg.PageToken}
	if req.Msg.Since != nil {
		if err := req.Msg.Since.CheckValid(); err != nil {
			return nil, connect.NewError(connect.CodeInvalidArgument, errInvalidSince)
		}
		q.Since = req.Msg.Since.AsTime()
	}
	events, next, err := s.Audit.List(ctx, p, q)
	if err != nil {
		return nil, depot.ToConnect(ctx, s.Logger, err)
	}
	out := &kilnv1.ListAuditEventsResponse{NextPageToken: next}
	for _, e := range events {
		out.Events = append(out.Events, &kilnv1.AuditEvent{Id: e.ID, Kind: e.Kind, At: timestamppb.New(e.At), OrgId: e.OrgID,
			ProjectId: e.ProjectID, Actor: e.Actor, Detail: e.Detail})
	}
	return connect.NewResponse(out), nil
}

var errInvalidSince = errors.New("since is not a valid timestamp")
