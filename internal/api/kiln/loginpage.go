package kiln

import (
	"context"
	"errors"
	"html/template"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/login"
)

// LoginPage is the device-login approval page at /login/{approval id}: it
// shows the code the user's terminal shows and lets an administrator
// approve or deny by pasting an organization token.
//
// Why the form is safe: nothing on this page is authorized by a cookie or
// other ambient credential; a POST is authorized only by the token in its
// own body, which a cross-site page cannot know. The browser's
// cross-origin signals are checked anyway (http.CrossOriginProtection), the
// page may not be framed, and the token is never written back into any
// response or log. Every value on the page goes through html/template.
type LoginPage struct {
	Logins *login.Service
	Authn  interface {
		Authenticate(ctx context.Context, secret string) (auth.Principal, error)
	}
	Logger *slog.Logger
}

// Mount registers GET and POST /login/{id} on mux.
func (lp *LoginPage) Mount(mux *http.ServeMux) {
	mux.HandleFunc("GET /login/{id}", lp.show)
	mux.HandleFunc("POST /login/{id}", lp.decide)
}

type pageData struct {
	ApprovalID string
	Code       string
	Status     login.Status
	Expires    string
	TokenDays  int
	Message    string
	Error      bool
}

var page = template.Must(template.New("login").Parse(`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>kiln login{{if .Code}} {{.Code}}{{end}}</title>
<style>
body { font-family: system-ui, sans-serif; max-width: 40rem; margin: 3rem auto; padding: 0 1rem; line-height: 1.5; }
code, pre, .code { font-family: ui-monospace, monospace; }
.code { font-size: 2.2rem; letter-spacing: .15em; margin: .2rem 0 1rem; }
.msg { padding: .6rem 1rem; border-radius: 4px; background: #e8f4e8; }
.msg.err { background: #fbe9e9; }
input { width: 100%; padding: .4rem; margin: .3rem 0 .8rem; font-family: ui-monospace, monospace; }
button { padding: .4rem 1.2rem; margin-right: .5rem; }
</style>
</head>
<body>
<h1>kiln login</h1>
{{if .Message}}<p class="msg{{if .Error}} err{{end}}">{{.Message}}</p>{{end}}
{{if .Code}}
<p>Login code</p>
<p class="code">{{.Code}}</p>
{{if eq .Status "pending"}}
<p>Someone ran <code>kiln login</code> (or <code>depot login</code>), or is signing in to this server's web dashboard, and asks for access.
Approve only if their terminal shows the same code and you trust them: they receive a new
<strong>organization token</strong> of your organization, valid for {{.TokenDays}} days.</p>
<p>Approve from a terminal that has an organization token:</p>
<pre>kiln login --approve {{.ApprovalID}}</pre>
<p>Or paste an organization token here (it is used for this request only, never stored):</p>
<form method="post" action="/login/{{.ApprovalID}}" autocomplete="off">
<label for="token">Organization token</label>
<input id="token" type="password" name="token" required autocomplete="off" spellcheck="false">
<button type="submit" name="decision" value="approve">Approve</button>
<button type="submit" name="decision" value="deny">Deny</button>
</form>
<p>This request expires at {{.Expires}}.</p>
{{else}}
<p>This login request is <strong>{{.Status}}</strong>; there is nothing left to do here.</p>
{{end}}
{{end}}
</body>
</html>
`))

func (lp *LoginPage) render(w http.ResponseWriter, status int, d pageData) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "same-origin")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	if err := page.Execute(w, d); err != nil {
		lp.Logger.Warn("render login page", "err", err)
	}
}

func (lp *LoginPage) data(info login.Info) pageData {
	return pageData{ApprovalID: info.ApprovalID, Code: info.Code, Status: info.Status,
		Expires:   info.ExpiresAt.UTC().Format("15:04:05 UTC (2006-01-02)"),
		TokenDays: int(lp.Logins.TokenTTL() / (24 * time.Hour))}
}

func (lp *LoginPage) lookup(w http.ResponseWriter, r *http.Request) (login.Info, bool) {
	info, err := lp.Logins.Lookup(r.Context(), r.PathValue("id"))
	if errdefs.IsNotFound(err) {
		// The id is not echoed: it may be anything a link carried.
		lp.render(w, http.StatusNotFound, pageData{Message: "No such login request. Run `kiln login` again for a new one.", Error: true})
		return login.Info{}, false
	}
	if err != nil {
		lp.Logger.ErrorContext(r.Context(), "login page", "err", err)
		lp.render(w, http.StatusInternalServerError, pageData{Message: "Internal error; see the server log.", Error: true})
		return login.Info{}, false
	}
	return info, true
}

func (lp *LoginPage) show(w http.ResponseWriter, r *http.Request) {
	if info, ok := lp.lookup(w, r); ok {
		lp.render(w, http.StatusOK, lp.data(info))
	}
}

var crossOrigin = http.NewCrossOriginProtection()

func (lp *LoginPage) decide(w http.ResponseWriter, r *http.Request) {
	if err := crossOrigin.Check(r); err != nil {
		lp.render(w, http.StatusForbidden, pageData{Message: "Cross-origin request refused: open the approve link directly.", Error: true})
		return
	}
	info, ok := lp.lookup(w, r)
	if !ok {
		return
	}
	d := lp.data(info)
	r.Body = http.MaxBytesReader(w, r.Body, 8<<10)
	if err := r.ParseForm(); err != nil {
		d.Message, d.Error = "The form could not be read.", true
		lp.render(w, http.StatusBadRequest, d)
		return
	}
	decision := r.PostForm.Get("decision")
	if decision != "approve" && decision != "deny" {
		d.Message, d.Error = "Choose Approve or Deny.", true
		lp.render(w, http.StatusBadRequest, d)
		return
	}
	p, err := lp.Authn.Authenticate(r.Context(), strings.TrimSpace(r.PostForm.Get("token")))
	if err != nil {
		if !errors.Is(err, errdefs.ErrUnauthenticated) {
			lp.Logger.ErrorContext(r.Context(), "login page: authenticate", "err", err)
		}
		d.Message, d.Error = "That token is not valid. Paste an organization token of this server.", true
		lp.render(w, http.StatusUnauthorized, d)
		return
	}
	if decision == "approve" {
		_, err = lp.Logins.Approve(r.Context(), p, info.ApprovalID)
	} else {
		_, err = lp.Logins.Deny(r.Context(), p, info.ApprovalID)
	}
	status := http.StatusOK
	switch {
	case err == nil && decision == "approve":
		d.Status, d.Message = login.StatusApproved, "Approved. The terminal showing code "+info.Code+" finishes logging in now."
	case err == nil:
		d.Status, d.Message = login.StatusDenied, "Denied. The terminal showing code "+info.Code+" is told so."
	case errors.Is(err, errdefs.ErrPermission):
		status, d.Message = http.StatusForbidden, "Approving a login needs an organization token; that one is not."
	case errors.Is(err, errdefs.ErrExpired):
		status, d.Status, d.Message = http.StatusGone, login.StatusExpired, "This login request expired. Run `kiln login` again."
	case errors.Is(err, errdefs.ErrFailedPrecondition):
		status, d.Message = http.StatusConflict, "This login request was already decided."
		if now, err := lp.Logins.Lookup(r.Context(), info.ApprovalID); err == nil {
			d.Status = now.Status
		}
	default:
		lp.Logger.ErrorContext(r.Context(), "login page: decide", "err", err)
		status, d.Message = http.StatusInternalServerError, "Internal error; see the server log."
	}
	d.Error = err != nil
	lp.render(w, status, d)
}
