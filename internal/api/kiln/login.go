// Package kiln serves kiln's own API (kiln.v1) and the small HTML pages
// that go with it, such as the device-login approval page. Like
// internal/api/depot it is thin: decode, take the caller, call the domain,
// convert errors with depot.ToConnect.
package kiln

import (
	"context"
	"log/slog"
	"net/http"
	"strings"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	kilnv1 "github.com/kiln-dev/kiln/gen/kiln/v1"
	"github.com/kiln-dev/kiln/gen/kiln/v1/kilnv1connect"
	"github.com/kiln-dev/kiln/internal/api/depot"
	"github.com/kiln-dev/kiln/internal/login"
)

// LoginAdminService serves kiln.v1.LoginAdminService: an administrator
// approves or denies a device login (`kiln login --approve|--deny`).
type LoginAdminService struct {
	Logins *login.Service
	Logger *slog.Logger
}

var _ kilnv1connect.LoginAdminServiceHandler = (*LoginAdminService)(nil)

// approvalID accepts the approval id or the whole approve URL, so an
// administrator can paste whichever the user sent.
func approvalID(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndex(s, depot.LoginPath); i >= 0 && strings.Contains(s, "://") {
		s = s[i+len(depot.LoginPath):]
	}
	return s
}

func (s *LoginAdminService) ApproveLogin(ctx context.Context, req *connect.Request[kilnv1.ApproveLoginRequest]) (*connect.Response[kilnv1.ApproveLoginResponse], error) {
	p, err := depot.Caller(ctx)
	if err != nil {
		return nil, err
	}
	a, err := s.Logins.Approve(ctx, p, approvalID(req.Msg.ApprovalId))
	if err != nil {
		return nil, depot.ToConnect(ctx, s.Logger, err)
	}
	return connect.NewResponse(&kilnv1.ApproveLoginResponse{Code: a.Code, TokenId: a.TokenID, OrgId: a.OrgID,
		TokenExpiresAt: timestamppb.New(a.TokenExpiresAt)}), nil
}

func (s *LoginAdminService) DenyLogin(ctx context.Context, req *connect.Request[kilnv1.DenyLoginRequest]) (*connect.Response[kilnv1.DenyLoginResponse], error) {
	p, err := depot.Caller(ctx)
	if err != nil {
		return nil, err
	}
	code, err := s.Logins.Deny(ctx, p, approvalID(req.Msg.ApprovalId))
	if err != nil {
		return nil, depot.ToConnect(ctx, s.Logger, err)
	}
	return connect.NewResponse(&kilnv1.DenyLoginResponse{Code: code}), nil
}

// MountLoginAdmin registers kiln.v1.LoginAdminService on mux.
func MountLoginAdmin(mux *http.ServeMux, svc *LoginAdminService, opts ...connect.HandlerOption) {
	mux.Handle(kilnv1connect.NewLoginAdminServiceHandler(svc, opts...))
}
