package web

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/store"
)

// A session is one browser's sign-in: the browser holds a random session
// id in an HttpOnly cookie; the store keeps the id's hash, the id of the
// token pasted into the sign-in form (never its secret) and the CSRF
// token, so any replica answers the browser and a restart signs nobody
// out. The token is looked up again by its id on every request: deleting
// or expiring it ends the session.
type session struct {
	// key is the hash of the cookie's id: the store's key.
	key string
	// principal is the session's token as looked up on this request (at
	// sign-in: as authenticated then).
	principal auth.Principal
	// csrf is the session's anti-forgery token, sent back in every form
	// (a hidden field) and in the X-CSRF-Token header of scripts' POSTs.
	csrf string
	// minted: the token was made for this session by a device login
	// (device.go); signing out deletes it, and so does the session's
	// ending any other way (Dashboard.dropMinted).
	minted  bool
	created time.Time
	seen    time.Time
}

// SessionStore keeps the dashboard's sessions and pending device logins
// (the store), and reads the tokens they signed in with.
type SessionStore interface {
	store.WebSessions
	GetToken(ctx context.Context, id string) (auth.Token, error)
}

var _ SessionStore = store.Store(nil)

// Session limits.
const (
	// sessionIdle ends a session nobody used for this long.
	sessionIdle = 12 * time.Hour
	// sessionLife ends every session this long after sign-in.
	sessionLife = 7 * 24 * time.Hour
	// maxTokenSessions bounds one token's sessions: its next sign-in ends
	// its least recently used one. Without it, anyone holding a token
	// could sign in in a loop and fill the store.
	maxTokenSessions = 20
	// touchEvery: a session's last use is written at most this often
	// (not on every page view); idleness is measured that coarsely.
	touchEvery = time.Minute
	// sweepEvery is how often a replica looks for expired sessions
	// besides the one asked for (a sign-in always does); sweepBatch
	// bounds one look.
	sweepEvery = time.Minute
	sweepBatch = 100

	cookieName       = "kiln_session"
	secureCookieName = "__Host-kiln_session" // over https
	csrfField        = "csrf"
	csrfHeader       = "X-CSRF-Token"
)

// sessions are the signed-in browsers, kept in the store by the hash of
// their cookie's id (what the store holds can not be replayed as a
// cookie). mu guards swept.
type sessions struct {
	st  SessionStore
	now func() time.Time
	// ended is told the token of each minted session (a device login's)
	// that ends other than by take: expired, evicted, replaced, or its
	// token refused. nil: nobody is told.
	ended func(tokenID string)
	mu    sync.Mutex
	// swept is when this replica last looked for expired sessions.
	swept time.Time
}

func newSessions(st SessionStore, now func() time.Time, ended func(tokenID string)) *sessions {
	return &sessions{st: st, now: now, ended: ended}
}

func sessionKey(id string) string {
	sum := sha256.Sum256([]byte(id))
	return hex.EncodeToString(sum[:])
}

// tell calls ended for the minted sessions of gone.
func (ss *sessions) tell(gone []store.WebSession) {
	if ss.ended == nil {
		return
	}
	for _, s := range gone {
		if s.Minted {
			ss.ended(s.TokenID)
		}
	}
}

// expired reports whether a session ended by idleness or age at now.
func expired(s store.WebSession, now time.Time) bool {
	return now.Sub(s.SeenAt) > sessionIdle || now.Sub(s.CreatedAt) > sessionLife
}

// sweep ends expired sessions if this replica did not look for some
// within sweepEvery (always if force); failures are left to the next.
func (ss *sessions) sweep(ctx context.Context, now time.Time, force bool) error {
	ss.mu.Lock()
	if !force && now.Sub(ss.swept) <= sweepEvery {
		ss.mu.Unlock()
		return nil
	}
	ss.swept = now
	ss.mu.Unlock()
	gone, err := ss.st.ExpireWebSessions(ctx, now.Add(-sessionIdle), now.Add(-sessionLife), sweepBatch)
	ss.tell(gone)
	return err
}

// create starts a session for the token p authenticated as, and returns
// the cookie's id. minted: the token was made for this session (a device
// login).
func (ss *sessions) create(ctx context.Context, p auth.Principal, minted bool) (string, *session, error) {
	id := auth.RandomString(43)
	now := ss.now()
	s := &session{key: sessionKey(id), principal: p, csrf: auth.RandomString(43), minted: minted, created: now, seen: now}
	if err := ss.sweep(ctx, now, true); err != nil {
		return "", nil, fmt.Errorf("expire dashboard sessions: %w", err)
	}
	over, err := ss.st.CreateWebSession(ctx, store.WebSession{IDHash: s.key, TokenID: p.TokenID, CSRF: s.csrf, Minted: minted,
		CreatedAt: now, SeenAt: now}, maxTokenSessions)
	if err != nil {
		return "", nil, fmt.Errorf("store a dashboard session: %w", err)
	}
	ss.tell(over)
	return id, s, nil
}

// get returns the live session of id, its token looked up again, and
// marks it used. ok is false for no session: none, expired, or its token
// deleted, expired or not one that signs in (the session then ends). err
// is the store's failure only.
func (ss *sessions) get(ctx context.Context, id string) (s *session, ok bool, err error) {
	if id == "" {
		return nil, false, nil
	}
	now := ss.now()
	if err := ss.sweep(ctx, now, false); err != nil {
		return nil, false, fmt.Errorf("expire dashboard sessions: %w", err)
	}
	rec, err := ss.st.GetWebSession(ctx, sessionKey(id))
	if errdefs.IsNotFound(err) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("read a dashboard session: %w", err)
	}
	if expired(rec, now) {
		return nil, false, ss.end(ctx, id)
	}
	t, err := ss.st.GetToken(ctx, rec.TokenID)
	if err != nil && !errdefs.IsNotFound(err) {
		return nil, false, fmt.Errorf("look up a dashboard session's token: %w", err)
	}
	if err != nil || !signsIn(t, now) {
		return nil, false, ss.end(ctx, id)
	}
	if now.Sub(rec.SeenAt) > touchEvery {
		if err := ss.st.TouchWebSession(ctx, rec.IDHash, now); err != nil {
			return nil, false, fmt.Errorf("touch a dashboard session: %w", err)
		}
		rec.SeenAt = now
	}
	return &session{key: rec.IDHash, principal: t.Principal(), csrf: rec.CSRF, minted: rec.Minted, created: rec.CreatedAt, seen: rec.SeenAt}, true, nil
}

// signsIn reports whether t may hold a dashboard session at now: an
// organization or project token that has not expired (what
// Authenticator.Authenticate checks of them, and what signIn admits).
func signsIn(t auth.Token, now time.Time) bool {
	return (t.Kind == auth.TokenOrg || t.Kind == auth.TokenProject) && (t.ExpiresAt.IsZero() || !now.After(t.ExpiresAt))
}

// end ends the session of id (replaced by a new sign-in, or its token
// refused), telling ended.
func (ss *sessions) end(ctx context.Context, id string) error {
	rec, err := ss.st.DeleteWebSession(ctx, sessionKey(id))
	if errdefs.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("end a dashboard session: %w", err)
	}
	ss.tell([]store.WebSession{rec})
	return nil
}

// take ends the session of id, telling nobody: the caller cleans up
// (signing out).
func (ss *sessions) take(ctx context.Context, id string) error {
	if _, err := ss.st.DeleteWebSession(ctx, sessionKey(id)); err != nil && !errdefs.IsNotFound(err) {
		return fmt.Errorf("end a dashboard session: %w", err)
	}
	return nil
}

// setCookie gives the browser its session id: HttpOnly (no script reads
// it), SameSite=Strict (no other site's page sends it), Secure when the
// request came over TLS or the server's public URL is https (a
// TLS-terminating proxy in front), and then named with the __Host- prefix
// (the browser keeps it to this host, path / and https). maxAge < 0
// deletes it.
func (d *Dashboard) setCookie(w http.ResponseWriter, r *http.Request, id string, maxAge int) {
	sec := d.secureReq(r)
	http.SetCookie(w, &http.Cookie{Name: cookieNameFor(sec), Value: id, Path: "/", MaxAge: maxAge,
		HttpOnly: true, Secure: sec, SameSite: http.SameSiteStrictMode})
}

func cookieNameFor(secure bool) string {
	if secure {
		return secureCookieName
	}
	return cookieName
}

func (d *Dashboard) cookieID(r *http.Request) string {
	c, err := r.Cookie(cookieNameFor(d.secureReq(r)))
	if err != nil {
		return ""
	}
	return c.Value
}

// publicURL is Config.PublicURL parsed; nil without one (or a bad one).
func (d *Dashboard) publicURL() *url.URL {
	if d.cfg.PublicURL == nil {
		return nil
	}
	u, err := url.Parse(d.cfg.PublicURL())
	if err != nil || u.Host == "" {
		return nil
	}
	return u
}

// publicHTTPS: browsers reach the server over https (its public URL).
func (d *Dashboard) publicHTTPS() bool {
	u := d.publicURL()
	return u != nil && u.Scheme == "https"
}

// secureReq: the browser talks https to the server, directly or through
// a TLS-terminating proxy (the public URL is https).
func (d *Dashboard) secureReq(r *http.Request) bool {
	return r.TLS != nil || d.publicHTTPS()
}

var (
	errCrossOrigin = errors.New("cross-origin request refused")
	errBadCSRF     = errors.New("the form is stale or forged: reload the page and try again")
)

// crossOrigin refuses requests a browser marks as sent by another site
// (Sec-Fetch-Site, else Origin against Host).
var crossOrigin = http.NewCrossOriginProtection()

// checkOrigin refuses a state-changing request from another origin: an
// Origin header, when sent, must name this very host or the public URL's
// (a TLS-terminating proxy in front may pass its own Host on); and
// otherwise the browser's Sec-Fetch-Site and Origin signals
// (http.CrossOriginProtection) must say same origin.
func (d *Dashboard) checkOrigin(r *http.Request) error {
	o := r.Header.Get("Origin")
	if o == "" {
		if crossOrigin.Check(r) != nil {
			return errCrossOrigin
		}
		return nil
	}
	u, err := url.Parse(o)
	if err != nil {
		return errCrossOrigin
	}
	if pub := d.publicURL(); pub != nil && u.Scheme == pub.Scheme && u.Host == pub.Host {
		return nil // the public origin: Check would compare it with the proxy's Host
	}
	if u.Host != r.Host || crossOrigin.Check(r) != nil {
		return errCrossOrigin
	}
	return nil
}

// checkCSRF is checkOrigin and the session's anti-forgery token, from the
// form or the header, compared in constant time. The caller has limited
// the body.
func (d *Dashboard) checkCSRF(r *http.Request, s *session) error {
	if err := d.checkOrigin(r); err != nil {
		return err
	}
	got := r.Header.Get(csrfHeader)
	if got == "" {
		got = r.PostFormValue(csrfField)
	}
	if got == "" || subtle.ConstantTimeCompare([]byte(got), []byte(s.csrf)) != 1 {
		return errBadCSRF
	}
	return nil
}
