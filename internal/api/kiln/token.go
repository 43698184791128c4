package kiln

import (
	"context"
	"log/slog"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	kilnv1 "github.com/kiln-dev/kiln/gen/kiln/v1"
	"github.com/kiln-dev/kiln/gen/kiln/v1/kilnv1connect"
	"github.com/kiln-dev/kiln/internal/api/depot"
	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/project"
)

// TokenService serves kiln.v1.TokenService (`kiln tokens`).
type TokenService struct {
	Projects *project.Service
	Logger   *slog.Logger
}

var _ kilnv1connect.TokenServiceHandler = (*TokenService)(nil)

var tokenKinds = map[kilnv1.TokenKind]auth.TokenKind{
	kilnv1.TokenKind_TOKEN_KIND_UNSPECIFIED:  auth.TokenProject,
	kilnv1.TokenKind_TOKEN_KIND_PROJECT:      auth.TokenProject,
	kilnv1.TokenKind_TOKEN_KIND_PULL:         auth.TokenPull,
	kilnv1.TokenKind_TOKEN_KIND_ORGANIZATION: auth.TokenOrg,
}

func kindPB(kind auth.TokenKind) kilnv1.TokenKind {
	switch kind {
	case auth.TokenPull:
		return kilnv1.TokenKind_TOKEN_KIND_PULL
	case auth.TokenOrg:
		return kilnv1.TokenKind_TOKEN_KIND_ORGANIZATION
	}
	return kilnv1.TokenKind_TOKEN_KIND_PROJECT
}

func tsOrNil(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

func (s *TokenService) CreateToken(ctx context.Context, req *connect.Request[kilnv1.CreateTokenRequest]) (*connect.Response[kilnv1.CreateTokenResponse], error) {
	p, err := depot.Caller(ctx)
	if err != nil {
		return nil, err
	}
	kind, ok := tokenKinds[req.Msg.Kind]
	if !ok {
		kind = "unknown"
	}
	t, secret, err := s.Projects.MintToken(ctx, p, project.Mint{Kind: kind, ProjectID: req.Msg.ProjectId,
		Description: req.Msg.Description, TTL: req.Msg.GetTtl().AsDuration()})
	if err != nil {
		return nil, depot.ToConnect(ctx, s.Logger, err)
	}
	return connect.NewResponse(&kilnv1.CreateTokenResponse{TokenId: t.ID, Secret: secret, ExpiresAt: tsOrNil(t.ExpiresAt)}), nil
}

func (s *TokenService) ListTokens(ctx context.Context, req *connect.Request[kilnv1.ListTokensRequest]) (*connect.Response[kilnv1.ListTokensResponse], error) {
	p, err := depot.Caller(ctx)
	if err != nil {
		return nil, err
	}
	var toks []auth.Token
	if req.Msg.ProjectId == "" {
		toks, err = s.Projects.ListOrgTokens(ctx, p)
	} else {
		toks, err = s.Projects.ListTokens(ctx, p, req.Msg.ProjectId)
	}
	if err != nil {
		return nil, depot.ToConnect(ctx, s.Logger, err)
	}
	out := &kilnv1.ListTokensResponse{}
	for _, t := range toks {
		out.Tokens = append(out.Tokens, &kilnv1.Token{TokenId: t.ID, Kind: kindPB(t.Kind), ProjectId: t.ProjectID,
			Description: t.Description, CreatedAt: timestamppb.New(t.CreatedAt), ExpiresAt: tsOrNil(t.ExpiresAt)})
	}
	return connect.NewResponse(out), nil
}
