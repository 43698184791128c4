package depot

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"regexp"
	"strings"
	"time"

	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/build"
	"github.com/kiln-dev/kiln/internal/errdefs"
)

// BuildPage serves GET /builds/{id}, the build_url CreateBuild and GetBuild
// answer (build.Config.BuildURL): the build as JSON — status, times, step
// counts, project and its own URL — for a caller that may see it, with the
// API's token as Bearer (or as the password of Basic, as registry clients
// send it). It is authorized exactly as GetBuild is (build.Service.Stats).
// Without a valid token it answers 401, and for a build the token may not
// see 404 — the same for a build of another organization as for none at
// all — each with a one-line hint.
//
// A browser (a request that accepts text/html, prefers it to JSON and
// sends no Authorization header) gets HTML instead, the dashboard's page;
// API callers, and anyone sending `Accept: application/json`, keep
// getting JSON.
type BuildPage struct {
	Builds *build.Service
	Authn  interface {
		Authenticate(ctx context.Context, secret string) (auth.Principal, error)
	}
	Logger *slog.Logger
	// HTML serves browsers (web.Dashboard.BuildPage); nil: JSON for all.
	HTML http.Handler
}

// wantsHTML reports a browser's request: no credentials of the API's, and
// an Accept that names text/html before any JSON.
func wantsHTML(r *http.Request) bool {
	if r.Header.Get("Authorization") != "" {
		return false
	}
	accept := r.Header.Get("Accept")
	html := strings.Index(accept, "text/html")
	if html < 0 {
		return false
	}
	json := strings.Index(accept, "application/json")
	return json < 0 || html < json
}

type buildPageView struct {
	buildSummary
	ProjectID string `json:"project_id"`
	URL       string `json:"url"`
}

// plainBuildID is what a build id can look like; anything else is not
// echoed back in a hint.
var plainBuildID = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// buildPageHint says how to read a build the request could not.
func buildPageHint(id string) string {
	if !plainBuildID.MatchString(id) {
		id = "BUILD_ID"
	}
	return "use `kiln builds get " + id + "` or send Authorization: Bearer <token>"
}

// pageSecret is the token of a request: Bearer, or Basic's password.
func pageSecret(r *http.Request) string {
	if s := auth.Bearer(r.Header.Get("Authorization")); s != "" {
		return s
	}
	if _, pass, ok := r.BasicAuth(); ok {
		return pass
	}
	return ""
}

func (h *BuildPage) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Add("Vary", "Accept, Authorization")
	if h.HTML != nil && wantsHTML(r) {
		h.HTML.ServeHTTP(w, r)
		return
	}
	hdr := w.Header()
	hdr.Set("Cache-Control", "no-store")
	hdr.Set("X-Content-Type-Options", "nosniff")
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	id := r.PathValue("id")
	p, err := h.Authn.Authenticate(ctx, pageSecret(r))
	if err != nil {
		if errors.Is(err, errdefs.ErrUnauthenticated) || errors.Is(err, errdefs.ErrPermission) {
			hdr.Set("WWW-Authenticate", `Bearer realm="kiln"`)
			http.Error(w, "401 unauthorized: "+buildPageHint(id), http.StatusUnauthorized)
			return
		}
		h.Logger.ErrorContext(ctx, "build page: authenticate", "err", err)
		http.Error(w, "internal error; see the server log", http.StatusInternalServerError)
		return
	}
	b, st, err := h.Builds.Stats(ctx, p, id)
	switch {
	case errdefs.IsNotFound(err) || errors.Is(err, errdefs.ErrInvalid) || errors.Is(err, errdefs.ErrPermission):
		http.Error(w, "404 not found: no such build for this token; "+buildPageHint(id), http.StatusNotFound)
		return
	case err != nil:
		h.Logger.ErrorContext(ctx, "build page", "build_id", id, "err", err)
		http.Error(w, "internal error; see the server log", http.StatusInternalServerError)
		return
	}
	v := buildPageView{buildSummary: summaryOf(b, st), ProjectID: b.ProjectID, URL: h.Builds.URL(b.ID)}
	hdr.Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		h.Logger.WarnContext(ctx, "build page: write", "err", fmt.Errorf("build %s: %w", b.ID, err))
	}
}
