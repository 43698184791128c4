package web

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/login"
	"github.com/kiln-dev/kiln/internal/seal"
	"github.com/kiln-dev/kiln/internal/store"
)

// Signing in with an administrator's approval, for whoever has no token
// to paste: the device login `kiln login` uses (internal/login). The
// browser starts a login and shows its code and approve link; an
// administrator approves it (the /login/{approval id} page, or `kiln login
// --approve`); the browser, which polls, then collects the login's new
// organization token — the server keeps only its id, the browser never
// sees it — and gets a session for it. The token ends with the session: signing out,
// expiry, eviction or a new sign-in in the browser deletes it.

// DeviceLogins is what the dashboard uses of login.Service.
type DeviceLogins interface {
	Start(ctx context.Context, peer string) (login.Started, error)
	Finish(ctx context.Context, id string) (string, error)
}

var _ DeviceLogins = (*login.Service)(nil)

// TokenDeleter deletes a token (project.Service.DeleteToken): the one a
// device login minted, when its session signs out.
type TokenDeleter interface {
	DeleteToken(ctx context.Context, p auth.Principal, id string) error
}

const (
	// loginCookie names the browser's pending device login, by a random
	// id of the server's (never the login's own secret id).
	loginCookie = "kiln_login"
	// loginPoll bounds one poll's wait for the approval.
	loginPoll = 20 * time.Second
	// deviceRetry is how long the device page waits to poll again after
	// a transient refusal (ErrExhausted, ErrUnavailable).
	deviceRetry = 3 * time.Second
)

// pendingLogin is a device login a browser started.
type pendingLogin struct {
	id       string // the login's secret id, which collects its token
	approval string // its approval id
	code     string
	expires  time.Time
}

// pendingLogins are the browsers' device logins, kept in the store by the
// hash of their cookie, so the browser's polls may reach any replica. The
// login's secret id is stored sealed with a key derived from the cookie
// (which the store does not hold): the table alone collects no token.
type pendingLogins struct {
	st SessionStore
}

func (pl *pendingLogins) put(ctx context.Context, l pendingLogin) (string, error) {
	id := auth.RandomString(43)
	sealed, err := sealLogin(id, l.id)
	if err != nil {
		return "", err
	}
	err = pl.st.PutWebLogin(ctx, store.WebLogin{IDHash: sessionKey(id), LoginSealed: sealed, ApprovalID: l.approval, Code: l.code, ExpiresAt: l.expires})
	if err != nil {
		return "", fmt.Errorf("store a pending device login: %w", err)
	}
	return id, nil
}

// get returns the browser's pending login; ok is false for none (or an
// expired one).
func (pl *pendingLogins) get(ctx context.Context, id string, now time.Time) (pendingLogin, bool, error) {
	l, err := pl.st.GetWebLogin(ctx, sessionKey(id))
	if errdefs.IsNotFound(err) {
		return pendingLogin{}, false, nil
	}
	if err != nil {
		return pendingLogin{}, false, fmt.Errorf("read a pending device login: %w", err)
	}
	if now.After(l.ExpiresAt) {
		return pendingLogin{}, false, nil
	}
	loginID, err := openLogin(id, l.LoginSealed)
	if err != nil {
		return pendingLogin{}, false, nil // not this cookie's
	}
	return pendingLogin{id: loginID, approval: l.ApprovalID, code: l.Code, expires: l.ExpiresAt}, true, nil
}

func (pl *pendingLogins) end(ctx context.Context, id string) error {
	if err := pl.st.DeleteWebLogin(ctx, sessionKey(id)); err != nil {
		return fmt.Errorf("end a pending device login: %w", err)
	}
	return nil
}

// loginKey is the key sealing a pending login's id under the browser's
// cookie id: the store's row alone cannot collect the login's token.
func loginKey(cookieID string) []byte {
	key := sha256.Sum256([]byte("kiln dashboard device login\x00" + cookieID))
	return key[:]
}

func sealLogin(cookieID, loginID string) (string, error) {
	return seal.Seal(loginKey(cookieID), "", []byte(loginID))
}

func openLogin(cookieID, sealed string) (string, error) {
	v, err := seal.Open(loginKey(cookieID), "", sealed)
	return string(v), err
}

// dropMinted deletes the token a device login minted for a session that
// ended without signing out (expired, evicted, replaced): nobody else
// holds it, and it would outlive the session by weeks. It runs in its own
// goroutine, bounded by pageTimeout; a failure is logged.
func (d *Dashboard) dropMinted(tokenID string) {
	if d.cfg.Tokens == nil {
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), pageTimeout)
		defer cancel()
		t, err := d.cfg.Sessions.GetToken(ctx, tokenID)
		if errdefs.IsNotFound(err) {
			return // gone already
		}
		if err == nil {
			// The token deletes itself, as its signing out would.
			err = d.cfg.Tokens.DeleteToken(ctx, t.Principal(), tokenID)
		}
		if err != nil && !errdefs.IsNotFound(err) && !errors.Is(err, errdefs.ErrUnauthenticated) && !errors.Is(err, errdefs.ErrPermission) {
			d.cfg.Logger.WarnContext(ctx, "dashboard: delete an ended device login's token", "token_id", tokenID, "err", err)
		}
	}()
}

// endLogin forgets the browser's pending login (it finished); a failure
// is logged: the record expires with the login anyway.
func (d *Dashboard) endLogin(ctx context.Context, id string) {
	if err := d.logins.end(ctx, id); err != nil {
		d.cfg.Logger.WarnContext(ctx, "dashboard: device login", "err", err)
	}
}

type deviceData struct {
	Code       string
	ApprovalID string
	Expires    string
}

// startDevice starts a device login for the browser and shows its code.
func (d *Dashboard) startDevice(w http.ResponseWriter, r *http.Request) {
	if d.cfg.Logins == nil {
		d.fail(w, r, nil, http.StatusNotFound, "This server does not offer device login.")
		return
	}
	if err := d.checkOrigin(r); err != nil {
		d.fail(w, r, nil, http.StatusForbidden, "Cross-origin sign-in refused: open the sign-in page of this server directly.")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), pageTimeout)
	defer cancel()
	st, err := d.cfg.Logins.Start(ctx, r.RemoteAddr)
	if err != nil {
		if errors.Is(err, errdefs.ErrExhausted) {
			d.render(w, r, http.StatusTooManyRequests, "signin", nil, "Sign in", signInData{Error: true, Message: err.Error()})
			return
		}
		d.cfg.Logger.ErrorContext(ctx, "dashboard: start device login", "err", err)
		d.fail(w, r, nil, http.StatusInternalServerError, "Internal error; see the server log.")
		return
	}
	id, err := d.logins.put(ctx, pendingLogin{id: st.ID, approval: st.ApprovalID, code: st.Code, expires: st.ExpiresAt})
	if err != nil {
		d.cfg.Logger.ErrorContext(ctx, "dashboard: start device login", "err", err)
		d.fail(w, r, nil, http.StatusInternalServerError, "Internal error; see the server log.")
		return
	}
	http.SetCookie(w, &http.Cookie{Name: loginCookie, Value: id, Path: "/sign-in/device", MaxAge: int(time.Until(st.ExpiresAt) / time.Second),
		HttpOnly: true, Secure: d.secureReq(r), SameSite: http.SameSiteStrictMode})
	d.render(w, r, http.StatusOK, "device", nil, "Sign in", deviceData{Code: st.Code, ApprovalID: st.ApprovalID,
		Expires: st.ExpiresAt.UTC().Format("15:04:05 UTC")})
}

type deviceAnswer struct {
	Done  bool   `json:"done"`
	Next  string `json:"next,omitempty"`
	Error string `json:"error,omitempty"`
}

// waitDevice is the device page's poll: it waits up to loginPoll for the
// approval; once approved it collects the token and starts the session.
// A POST (its script's, with the origin checked): it may sign in.
func (d *Dashboard) waitDevice(w http.ResponseWriter, r *http.Request) {
	d.secure(w)
	w.Header().Set("Cache-Control", "no-store")
	answer := func(status int, a deviceAnswer) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		json.NewEncoder(w).Encode(a)
	}
	if err := d.checkOrigin(r); err != nil {
		answer(http.StatusForbidden, deviceAnswer{Error: "cross-origin request refused"})
		return
	}
	c, err := r.Cookie(loginCookie)
	var pending pendingLogin
	ok := false
	if err == nil && d.cfg.Logins != nil {
		if pending, ok, err = d.logins.get(r.Context(), c.Value, d.cfg.Now()); err != nil {
			d.cfg.Logger.ErrorContext(r.Context(), "dashboard: device login", "err", err)
			answer(http.StatusInternalServerError, deviceAnswer{Error: "internal error; see the server log"})
			return
		}
	}
	if !ok {
		answer(http.StatusNotFound, deviceAnswer{Error: "no login in progress; start again"})
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), loginPoll)
	defer cancel()
	secret, err := d.cfg.Logins.Finish(ctx, pending.id)
	switch {
	case errors.Is(err, context.DeadlineExceeded) && r.Context().Err() == nil:
		answer(http.StatusOK, deviceAnswer{}) // not yet: poll again
		return
	case errors.Is(err, errdefs.ErrExhausted) || (errors.Is(err, errdefs.ErrUnavailable) && r.Context().Err() == nil):
		// Transient (too many waiting, the server shutting down): the
		// login stays pending and the page polls again after a while.
		status := http.StatusServiceUnavailable
		if errors.Is(err, errdefs.ErrExhausted) {
			status = http.StatusTooManyRequests
		}
		retryAfter(w, deviceRetry)
		answer(status, deviceAnswer{})
		return
	case err != nil:
		d.endLogin(r.Context(), c.Value)
		// The browser is not signed in: it reads the domain's message of
		// a known kind only, never an internal error's text.
		msg := "internal error; see the server log"
		if errdefs.IsNotFound(err) || errors.Is(err, errdefs.ErrExpired) || errors.Is(err, errdefs.ErrPermission) ||
			errors.Is(err, errdefs.ErrFailedPrecondition) {
			msg = err.Error()
		} else if r.Context().Err() == nil {
			d.cfg.Logger.ErrorContext(r.Context(), "dashboard: finish device login", "err", err)
		}
		answer(http.StatusOK, deviceAnswer{Error: msg})
		return
	}
	d.endLogin(r.Context(), c.Value)
	p, err := d.cfg.Authn.Authenticate(r.Context(), secret)
	if err != nil {
		d.cfg.Logger.ErrorContext(r.Context(), "dashboard: authenticate a device login's token", "err", err)
		answer(http.StatusInternalServerError, deviceAnswer{Error: "internal error; see the server log"})
		return
	}
	if old := d.cookieID(r); old != "" {
		if err := d.sessions.end(r.Context(), old); err != nil {
			d.cfg.Logger.WarnContext(r.Context(), "dashboard: end the replaced session", "err", err)
		}
	}
	id, _, err := d.sessions.create(r.Context(), p, true)
	if err != nil {
		d.cfg.Logger.ErrorContext(r.Context(), "dashboard: sign in by device login", "err", err)
		answer(http.StatusInternalServerError, deviceAnswer{Error: "internal error; see the server log"})
		return
	}
	d.setCookie(w, r, id, int(sessionLife/time.Second))
	http.SetCookie(w, &http.Cookie{Name: loginCookie, Path: "/sign-in/device", MaxAge: -1, HttpOnly: true, Secure: d.secureReq(r), SameSite: http.SameSiteStrictMode})
	d.cfg.Logger.InfoContext(r.Context(), "dashboard: signed in by device login", "token_id", p.TokenID)
	answer(http.StatusOK, deviceAnswer{Done: true, Next: homeOf(p)})
}
