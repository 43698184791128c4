package depot

import (
	"context"
	"log/slog"
	"net/http"

	"connectrpc.com/connect"

	cliv1beta1 "github.com/kiln-dev/kiln/gen/depot/cli/v1beta1"
	"github.com/kiln-dev/kiln/gen/depot/cli/v1beta1/cliv1beta1connect"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/login"
	"github.com/kiln-dev/kiln/internal/project"
)

// LoginPath is where a login's approval page lives: PublicURL + LoginPath +
// approval id is StartLoginResponse.approve_url.
const LoginPath = "/login/"

// LoginService serves depot.cli.v1beta1.LoginService, the device login.
// Both methods are public procedures (no token): the caller has none yet.
type LoginService struct {
	Logins *login.Service
	// PublicURL is the server's base URL as users reach it (no trailing
	// slash). A function: the default names the listener's real port,
	// known only once it is bound.
	PublicURL func() string
	Logger    *slog.Logger
}

var _ cliv1beta1connect.LoginServiceHandler = (*LoginService)(nil)

func (s *LoginService) StartLogin(ctx context.Context, req *connect.Request[cliv1beta1.StartLoginRequest]) (*connect.Response[cliv1beta1.StartLoginResponse], error) {
	st, err := s.Logins.Start(ctx, req.Peer().Addr)
	if err != nil {
		return nil, ToConnect(ctx, s.Logger, err)
	}
	return connect.NewResponse(&cliv1beta1.StartLoginResponse{Id: st.ID, ApproveUrl: s.PublicURL() + LoginPath + st.ApprovalID}), nil
}

// FinishLogin sends nothing while the login waits for approval, then the
// token once. Expiry answers DeadlineExceeded, denial PermissionDenied, a
// second finish FailedPrecondition, an unknown id NotFound.
func (s *LoginService) FinishLogin(ctx context.Context, req *connect.Request[cliv1beta1.FinishLoginRequest], stream *connect.ServerStream[cliv1beta1.FinishLoginResponse]) error {
	token, err := s.Logins.Finish(ctx, req.Msg.Id)
	if err != nil {
		return ToConnect(ctx, s.Logger, err)
	}
	// If this send fails the token is lost with the connection; the
	// client starts a new login (the token is never handed out twice).
	return stream.Send(&cliv1beta1.FinishLoginResponse{Token: token})
}

// CLIProjectsService serves depot.cli.v1beta1.ProjectsService: the CLI's
// project list (with organization names) and cache reset.
type CLIProjectsService struct {
	Projects *project.Service
	Orgs     interface {
		GetOrganization(ctx context.Context, id string) (project.Organization, error)
	}
	Logger *slog.Logger
}

var _ cliv1beta1connect.ProjectsServiceHandler = (*CLIProjectsService)(nil)

// orgName names an organization; a missing one (deleted under us) is "".
func (s *CLIProjectsService) orgName(ctx context.Context, id string, cache map[string]string) (string, error) {
	if name, ok := cache[id]; ok {
		return name, nil
	}
	o, err := s.Orgs.GetOrganization(ctx, id)
	if err != nil && !errdefs.IsNotFound(err) {
		return "", err
	}
	cache[id] = o.Name
	return o.Name, nil
}

func (s *CLIProjectsService) ListProjects(ctx context.Context, _ *connect.Request[cliv1beta1.ListProjectsRequest]) (*connect.Response[cliv1beta1.ListProjectsResponse], error) {
	p, err := Caller(ctx)
	if err != nil {
		return nil, err
	}
	projects, err := s.Projects.List(ctx, p)
	if err != nil {
		return nil, ToConnect(ctx, s.Logger, err)
	}
	out := &cliv1beta1.ListProjectsResponse{}
	names := map[string]string{}
	for _, proj := range projects {
		org, err := s.orgName(ctx, proj.OrgID, names)
		if err != nil {
			return nil, ToConnect(ctx, s.Logger, err)
		}
		out.Projects = append(out.Projects, &cliv1beta1.ListProjectsResponse_Project{Id: proj.ID, Name: proj.Name, OrgId: proj.OrgID, OrgName: org})
	}
	return connect.NewResponse(out), nil
}

// ResetProjectCache empties the project's builder state. Organization
// tokens and the project's own project (or OIDC) principals may; build
// tokens may not.
func (s *CLIProjectsService) ResetProjectCache(ctx context.Context, req *connect.Request[cliv1beta1.ResetProjectCacheRequest]) (*connect.Response[cliv1beta1.ResetProjectCacheResponse], error) {
	p, err := Caller(ctx)
	if err != nil {
		return nil, err
	}
	proj, err := s.Projects.ResetCache(ctx, p, req.Msg.ProjectId)
	if err != nil {
		return nil, ToConnect(ctx, s.Logger, err)
	}
	s.Logger.InfoContext(ctx, "project cache reset", "project_id", proj.ID, "token_id", p.TokenID)
	org, err := s.orgName(ctx, proj.OrgID, map[string]string{})
	if err != nil {
		return nil, ToConnect(ctx, s.Logger, err)
	}
	return connect.NewResponse(&cliv1beta1.ResetProjectCacheResponse{Name: proj.Name, OrgName: org}), nil
}

// MountCLIv1beta1 registers depot.cli.v1beta1's LoginService and
// ProjectsService on mux. The LoginService procedures must be public in
// the auth interceptor (see internal/server).
func MountCLIv1beta1(mux *http.ServeMux, logins *LoginService, projects *CLIProjectsService, opts ...connect.HandlerOption) {
	mux.Handle(cliv1beta1connect.NewLoginServiceHandler(logins, opts...))
	mux.Handle(cliv1beta1connect.NewProjectsServiceHandler(projects, opts...))
}
