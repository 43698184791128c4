package web

import (
	"bytes"
	"context"
	"embed"
	"errors"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/kiln-dev/kiln/internal/audit"
	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/build"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/project"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed assets
var assetFS embed.FS

// Builds is what the dashboard reads of builds (build.Service). Each call
// authorizes the principal as the API's calls do.
type Builds interface {
	Stats(ctx context.Context, p auth.Principal, buildID string) (build.Build, build.Stats, error)
	Steps(ctx context.Context, p auth.Principal, buildID string) ([]build.Step, error)
	Page(ctx context.Context, p auth.Principal, projectID string, pageSize int, pageToken string) ([]build.Build, string, error)
	Resources(ctx context.Context, p auth.Principal, buildID string) (build.Resources, error)
	Usage(ctx context.Context, p auth.Principal, projects []project.Project, period build.Period, withSaved bool) ([]build.Usage, error)
	Share(ctx context.Context, p auth.Principal, buildID string) (string, error)
	StopSharing(ctx context.Context, p auth.Principal, buildID string) error
	// Shared resolves a share link's token without a principal; a
	// malformed, unknown or revoked token is ErrNotFound.
	Shared(ctx context.Context, token string) (build.SharedBuild, error)
}

var _ Builds = (*build.Service)(nil)

// Projects is what the dashboard reads of projects (project.Service).
type Projects interface {
	List(ctx context.Context, p auth.Principal) ([]project.Project, error)
	Get(ctx context.Context, p auth.Principal, id string) (project.Project, error)
	ListTokens(ctx context.Context, p auth.Principal, projectID string) ([]auth.Token, error)
	ListTrustPolicies(ctx context.Context, p auth.Principal, projectID string) ([]auth.TrustPolicy, error)
}

var _ Projects = (*project.Service)(nil)

// Logs reads a build's log lines, every step's, after sequence number
// after (the store). It does not authorize: the dashboard reads a build
// through Builds first.
type Logs interface {
	ListBuildLogs(ctx context.Context, buildID string, after int, limit int) ([]build.LogLine, error)
}

// Samples reads a build's resource samples and events (the store), for a
// shared build's page. Like Logs it does not authorize: the share token
// is resolved through Builds.Shared first.
type Samples interface {
	ListResourceSamples(ctx context.Context, buildID string) ([]build.ResourceSample, error)
	ListResourceEvents(ctx context.Context, buildID string) ([]build.ResourceEvent, error)
}

// Runner cancels and rebuilds source builds (runner.Runner), authorizing
// as the API's CancelBuild and RebuildBuild do.
type Runner interface {
	Cancel(ctx context.Context, p auth.Principal, id string) (build.Build, error)
	Rebuild(ctx context.Context, p auth.Principal, id string) (build.Build, error)
}

// AuditLog reads the audit log (audit.Recorder), for organization tokens.
type AuditLog interface {
	List(ctx context.Context, p auth.Principal, q audit.Query) ([]audit.Entry, string, error)
}

var _ AuditLog = (*audit.Recorder)(nil)

// Image is one image saved in a project's repositories of kiln's registry.
type Image struct {
	Tag      string // "<tag>", or "<name>:<tag>" in <project>/<name>
	Digest   string
	PushedAt time.Time
	Size     int64
	// Expires is when the project's retention ends for the tag (PushedAt
	// plus the retention): the registry's next garbage collection after
	// it untags the image, unless a build is using it. Zero: not known.
	Expires time.Time
}

// Authenticator checks a kiln token (auth.Authenticator).
type Authenticator interface {
	Authenticate(ctx context.Context, secret string) (auth.Principal, error)
}

// Config is what the dashboard is made of. Builds, Projects, Logs, Authn
// and Sessions are required; Runner nil hides Cancel and Rebuild.
type Config struct {
	Builds   Builds
	Projects Projects
	Logs     Logs
	Runner   Runner
	Authn    Authenticator
	// Sessions keeps the signed-in browsers and their pending device
	// logins (the store, shared by every replica).
	Sessions SessionStore
	Logger   *slog.Logger
	// Logins starts and finishes device logins, for signing in with an
	// administrator's approval; Tokens deletes such a login's token when
	// its session signs out. nil Logins: no device sign-in.
	Logins DeviceLogins
	Tokens TokenDeleter
	// Samples gives a shared build's page its resource peaks; nil: a
	// shared build shows none.
	Samples Samples
	// Audit is the audit log; nil: no audit page.
	Audit AuditLog
	// Images lists up to limit images of a project in kiln's registry,
	// authorized as the registry's API (registry.Registry.ListImages),
	// each with its expiry (registry.Registry.Retention); more reports
	// there were more. nil: none shown.
	Images func(ctx context.Context, p auth.Principal, projectID string, limit int) (images []Image, more bool, err error)
	// Trigger says what started a build ("upload", "git", "rebuild of
	// <id>", "CI job", …); nil: the builds list has no trigger column.
	Trigger func(b build.Build) string
	// QueuePosition is how many builds wait ahead of a queued source
	// build (runner.Runner.Describe); nil shows none.
	QueuePosition func(b build.Build) int
	// Queue lists the ids of a project's source builds waiting to
	// start, in the order they will (runner.Runner.Queued); it does not
	// authorize (each build is read through Builds). nil: the project
	// page has no queue.
	Queue func(projectID string) []string
	// Builders reports the builders' states, by project id: one
	// "<platform> <state>" each (builder.Fleet.Status); nil shows none.
	Builders func() map[string][]string
	// Denied records a refused sign-in (the audit log's "denied", as
	// the API's refused calls); nil: it is only logged. peer is the
	// remote address; reason is what was refused, never the token.
	Denied func(ctx context.Context, peer, reason string)
	// PublicURL is the server's public URL, as browsers reach it (kiln
	// serve --public-url); nil or "": the request's own host only. An
	// https one makes the session cookie Secure (and __Host-) even when a
	// TLS-terminating proxy forwards plain http, lets an Origin of its
	// host in, and sends Strict-Transport-Security.
	PublicURL func() string
	// Now is the clock; nil → time.Now.
	Now func() time.Time
}

// Dashboard serves the web pages. Its sessions live in the store; its
// rate limits and caches in this replica's memory.
type Dashboard struct {
	cfg      Config
	sessions *sessions
	logins   *pendingLogins
	// usage is the projects page's usage, per organization, for a minute.
	usage usageCache
	// liveCache and livePolls: the build page's polls (livecache.go).
	liveCache liveCache
	livePolls *limiter
	// signIns limits POST /sign-in per remote address.
	signIns *limiter
	pages   map[string]*template.Template
	assets  fs.FS
}

// New makes the dashboard.
func New(cfg Config) (*Dashboard, error) {
	if cfg.Builds == nil || cfg.Projects == nil || cfg.Logs == nil || cfg.Authn == nil || cfg.Sessions == nil {
		return nil, errors.New("web: Builds, Projects, Logs, Authn and Sessions are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	d := &Dashboard{cfg: cfg, logins: &pendingLogins{st: cfg.Sessions},
		pages: map[string]*template.Template{}, signIns: newLimiter(signInRate, signInBurst, cfg.Now), livePolls: newLimiter(livePollRate, livePollBurst, cfg.Now)}
	d.sessions = newSessions(cfg.Sessions, cfg.Now, d.dropMinted)
	for _, name := range []string{"signin", "device", "projects", "project", "build", "audit", "error"} {
		t, err := template.New("layout.html").Funcs(funcs).ParseFS(templateFS, "templates/layout.html", "templates/"+name+".html")
		if err != nil {
			return nil, err
		}
		d.pages[name] = t
	}
	var err error
	if d.assets, err = fs.Sub(assetFS, "assets"); err != nil {
		return nil, err
	}
	return d, nil
}

// Sign-ins a remote address may make: signInBurst at once, then one per
// 1/signInRate seconds.
const (
	signInBurst = 10
	signInRate  = 1.0 / 6
)

// denied records a refused sign-in (Config.Denied, which logs it as the
// API's refusals are, throttled), or, without one, logs it.
func (d *Dashboard) denied(ctx context.Context, r *http.Request, reason string) {
	if d.cfg.Denied != nil {
		d.cfg.Denied(ctx, r.RemoteAddr, reason)
		return
	}
	d.cfg.Logger.WarnContext(ctx, "dashboard: sign-in refused", "peer", r.RemoteAddr, "reason", reason)
}

// Mount registers the dashboard's routes on mux. GET /builds/{id} is not
// among them: the server serves it to API callers as JSON and hands
// browsers to BuildPage.
func (d *Dashboard) Mount(mux *http.ServeMux) {
	mux.HandleFunc("GET /{$}", d.home)
	mux.HandleFunc("GET /sign-in", d.signInPage)
	mux.HandleFunc("POST /sign-in", d.signIn)
	mux.HandleFunc("POST /sign-in/device", d.startDevice)
	mux.HandleFunc("POST /sign-in/device/wait", d.waitDevice)
	mux.HandleFunc("POST /sign-out", d.signOut)
	mux.HandleFunc("GET /projects", d.projectsPage)
	mux.HandleFunc("GET /projects/{id}", d.projectPage)
	mux.HandleFunc("GET /audit", d.auditPage)
	mux.HandleFunc("GET /builds/{id}/live", d.buildLive)
	mux.HandleFunc("POST /builds/{id}/cancel", d.cancelBuild)
	mux.HandleFunc("POST /builds/{id}/rebuild", d.rebuildBuild)
	mux.HandleFunc("POST /builds/{id}/share", d.shareBuild)
	mux.HandleFunc("POST /builds/{id}/unshare", d.shareBuild)
	mux.HandleFunc("GET /shared/{token}/live", d.sharedLive)
	mux.Handle("GET /assets/", http.StripPrefix("/assets/", d.assetHandler()))
}

// BuildPage is the HTML page of GET /builds/{id}, for a browser.
func (d *Dashboard) BuildPage() http.Handler { return http.HandlerFunc(d.buildPage) }

// SharedPage is the HTML page of a share link, GET /shared/{token}: the
// build page, read-only, for anyone holding the link. The server serves
// the path's JSON itself (depot.SharePage) and hands browsers here.
func (d *Dashboard) SharedPage() http.Handler { return http.HandlerFunc(d.sharedPage) }

// csp lets the pages load only the server's own scripts, styles and
// images, talk only to the server, submit forms only to it, and never be
// framed. No inline script or style runs.
const csp = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; " +
	"form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

// secure sets the headers every dashboard answer carries; with an https
// public URL, Strict-Transport-Security too.
func (d *Dashboard) secure(w http.ResponseWriter) {
	h := w.Header()
	if d.publicHTTPS() {
		h.Set("Strict-Transport-Security", "max-age=31536000")
	}
	h.Set("Content-Security-Policy", csp)
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "same-origin")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
	h.Set("Cross-Origin-Resource-Policy", "same-origin")
}

func (d *Dashboard) assetHandler() http.Handler {
	files := http.FileServerFS(d.assets)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d.secure(w)
		if r.URL.Path == "" || strings.HasSuffix(r.URL.Path, "/") {
			http.NotFound(w, r) // no listings
			return
		}
		w.Header().Set("Cache-Control", "no-cache")
		files.ServeHTTP(w, r)
	})
}

// view is what every page template gets.
type view struct {
	Title string
	// Signed is the session's principal, nil on the sign-in page.
	Signed *auth.Principal
	CSRF   string
	// Home is where the header's kiln link goes.
	Home string
	// Shared: a share link's page, whose URL is its secret (no Referer).
	Shared bool
	Data   any
}

func (d *Dashboard) render(w http.ResponseWriter, r *http.Request, status int, name string, s *session, title string, data any) {
	v := view{Title: title, Data: data, Home: "/"}
	if s != nil {
		v.Signed, v.CSRF = &s.principal, s.csrf
	}
	d.renderView(w, r, status, name, v)
}

func (d *Dashboard) renderView(w http.ResponseWriter, r *http.Request, status int, name string, v view) {
	var buf bytes.Buffer
	if err := d.pages[name].Execute(&buf, v); err != nil {
		d.cfg.Logger.ErrorContext(r.Context(), "dashboard: render", "page", name, "err", err)
		http.Error(w, "internal error; see the server log", http.StatusInternalServerError)
		return
	}
	d.secure(w)
	if v.Shared {
		w.Header().Set("Referrer-Policy", "no-referrer")
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	w.Write(buf.Bytes())
}

type errorData struct {
	Message string
}

func (d *Dashboard) fail(w http.ResponseWriter, r *http.Request, s *session, status int, msg string) {
	d.render(w, r, status, "error", s, http.StatusText(status), errorData{Message: msg})
}

// failErr answers err from a domain call: a build or project this session
// may not see answers exactly as one that does not exist.
func (d *Dashboard) failErr(w http.ResponseWriter, r *http.Request, s *session, what string, err error) {
	switch {
	case errdefs.IsNotFound(err) || errors.Is(err, errdefs.ErrPermission) || errors.Is(err, errdefs.ErrInvalid):
		d.fail(w, r, s, http.StatusNotFound, "No such "+what+" for this sign-in.")
	case errors.Is(err, errdefs.ErrFailedPrecondition):
		d.fail(w, r, s, http.StatusConflict, err.Error()) // domain messages are the API's too
	default:
		d.cfg.Logger.ErrorContext(r.Context(), "dashboard", "what", what, "err", err)
		d.fail(w, r, s, http.StatusInternalServerError, "Internal error; see the server log.")
	}
}

// session returns the request's signed-in session and its principal as
// of now: the token behind it is looked up again, so a deleted or expired
// token ends the session. Without one it answers (a redirect to the
// sign-in page for a page, 401 for a script) and returns false.
func (d *Dashboard) session(w http.ResponseWriter, r *http.Request, page bool) (*session, auth.Principal, bool) {
	id := d.cookieID(r)
	s, ok, err := d.sessions.get(r.Context(), id)
	if err != nil {
		d.cfg.Logger.ErrorContext(r.Context(), "dashboard: authenticate session", "err", err)
		d.fail(w, r, nil, http.StatusInternalServerError, "Internal error; see the server log.")
		return nil, auth.Principal{}, false
	}
	if !ok {
		if id != "" {
			d.setCookie(w, r, "", -1)
		}
		if page {
			next := "/sign-in"
			if id != "" {
				next += "?ended=1"
			}
			if r.Method == http.MethodGet && r.URL.Path != "/" {
				sep := "?"
				if id != "" {
					sep = "&"
				}
				next += sep + "next=" + url.QueryEscape(r.URL.Path)
			}
			d.secure(w)
			http.Redirect(w, r, next, http.StatusSeeOther)
		} else {
			d.secure(w)
			http.Error(w, "signed out", http.StatusUnauthorized)
		}
		return nil, auth.Principal{}, false
	}
	return s, s.principal, true
}
