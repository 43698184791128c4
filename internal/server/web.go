package server

import (
	"context"
	"net/http"

	"github.com/kiln-dev/kiln/internal/api/depot"
	"github.com/kiln-dev/kiln/internal/audit"
	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/build"
	"github.com/kiln-dev/kiln/internal/login"
	"github.com/kiln-dev/kiln/internal/project"
	"github.com/kiln-dev/kiln/internal/web"
)

// mountWeb serves the dashboard (internal/web) at / on the API's listener,
// and GET /builds/{id}: JSON to API callers, the build's page to browsers
// (buildpage.go). It comes after openSource: Cancel and Rebuild go to the
// runner. Browsers without a token sign in through logins, the device
// login kiln login uses.
func (s *Server) mountWeb(mux *http.ServeMux, authn *auth.Authenticator, projects *project.Service, logins *login.Service) error {
	dash, err := web.New(web.Config{Builds: s.builds, Projects: projects, Logs: s.store, Runner: s.runner,
		Authn: authn, Sessions: s.store, Logger: s.cfg.Logger, Builders: s.builderStates, Logins: logins, Tokens: projects,
		QueuePosition: func(b build.Build) int { _, ahead := s.runner.Describe(b); return ahead },
		Queue:         s.runner.Queued,
		PublicURL:     s.publicURL,
		Audit:         s.audit, Images: s.projectImages, Trigger: s.buildTrigger, Samples: s.store,
		Denied: func(ctx context.Context, peer, reason string) { // as auditDenied records the API's refusals
			if authn.Audit != nil {
				authn.Audit(ctx, audit.KindDenied, "procedure", "POST /sign-in", "code", "unauthenticated", "reason", reason, "peer", peer)
			}
		}})
	if err != nil {
		return err
	}
	dash.Mount(mux)
	// ShareBuild's links: public, the token in the path is the capability;
	// JSON for API callers, the dashboard's read-only build page for browsers.
	mux.Handle("GET /shared/{token}", &depot.SharePage{Builds: s.builds, Page: dash.SharedPage(), Logger: s.cfg.Logger})
	s.mountBuildPage(mux, authn, dash.BuildPage())
	return nil
}

// builderStates is each project's builders as the dashboard lists them:
// "<platform> <state>".
func (s *Server) builderStates() map[string][]string {
	out := map[string][]string{}
	for _, st := range s.fleet.Status() {
		out[st.ProjectID] = append(out[st.ProjectID], st.Platform+" "+string(st.State))
	}
	return out
}

// projectImages lists a project's images in kiln's registry for the
// dashboard, authorized as the registry's ListImages, each expiring its
// project's retention after its push (the garbage collector's rule).
func (s *Server) projectImages(ctx context.Context, p auth.Principal, projectID string, limit int) ([]web.Image, bool, error) {
	images, next, err := s.registry.ListImages(ctx, p, projectID, limit, "")
	if err != nil {
		return nil, false, err
	}
	keep, _, err := s.registry.Retention(ctx, p, projectID)
	if err != nil {
		return nil, false, err
	}
	out := make([]web.Image, 0, len(images))
	for _, im := range images {
		out = append(out, web.Image{Tag: im.Tag, Digest: im.Digest, PushedAt: im.PushedAt, Size: im.Size, Expires: im.PushedAt.Add(keep)})
	}
	return out, next != "", nil
}

// buildTrigger says what started a build, for the dashboard: a source
// build's upload, git URL or rebuild; a client build of a CI job (admitted
// by a trust policy) or of a kiln token (the CLI, depot, the API).
func (s *Server) buildTrigger(b build.Build) string {
	if b.IsSource() {
		spec, _ := s.runner.Describe(b)
		switch {
		case spec.RebuildOf != "":
			return "rebuild of " + spec.RebuildOf
		case spec.GitURL != "":
			return "git"
		}
		return "upload"
	}
	if len(b.PolicyIDs) > 0 {
		return "CI job"
	}
	return "kiln token"
}
