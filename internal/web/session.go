package web

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/kiln-dev/kiln/internal/auth"
)

// A session is one browser's sign-in: the token pasted into the sign-in
// form, kept in the server's memory only (the browser holds a random
// session id in an HttpOnly cookie, never the token), and the principal
// it authenticated as then. Sessions live in memory: a restart of kiln
// serve signs everyone out.
type session struct {
	// secret is the kiln token behind the session, authenticated again on
	// every request (Dashboard.session); never written anywhere.
	secret string
	// principal is who the token was at sign-in; a later authentication
	// must find the same token.
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

// Session limits.
const (
	// sessionIdle ends a session nobody used for this long.
	sessionIdle = 12 * time.Hour
	// sessionLife ends every session this long after sign-in.
	sessionLife = 7 * 24 * time.Hour
	// maxSessions bounds the memory sessions take; signing in beyond it
	// ends the least recently used one.
	maxSessions = 10000
	// maxTokenSessions bounds one token's sessions: its next sign-in ends
	// its least recently used one. Without it, anyone holding a token
	// could sign in in a loop and push everyone else's sessions out.
	maxTokenSessions = 20
	cookieName       = "kiln_session"
	secureCookieName = "__Host-kiln_session" // over https
	csrfField        = "csrf"
	csrfHeader       = "X-CSRF-Token"
)

// sessions are the signed-in browsers, by the hash of their cookie's id
// (what the map holds can not be replayed as a cookie). mu guards m and
// swept.
type sessions struct {
	mu  sync.Mutex
	m   map[string]*session
	now func() time.Time
	// ended is told of each minted session (a device login's) that ends
	// other than by take: expired, evicted, replaced, or its token
	// refused; called without mu held. nil: nobody is told.
	ended func(*session)
	// swept is when expire last ran over all sessions.
	swept time.Time
}

// sweepEvery is how often get looks for expired sessions besides its
// own (create always does).
const sweepEvery = time.Minute

func newSessions(now func() time.Time, ended func(*session)) *sessions {
	return &sessions{m: map[string]*session{}, now: now, ended: ended}
}

func sessionKey(id string) string {
	sum := sha256.Sum256([]byte(id))
	return hex.EncodeToString(sum[:])
}

// tell calls ended for the minted sessions of gone; mu is not held.
func (ss *sessions) tell(gone []*session) {
	if ss.ended == nil {
		return
	}
	for _, s := range gone {
		if s.minted {
			ss.ended(s)
		}
	}
}

// create starts a session for secret, which authenticated as p, and
// returns the cookie's id. minted: the token was made for this session
// (a device login).
func (ss *sessions) create(secret string, p auth.Principal, minted bool) (string, *session) {
	id := auth.RandomString(43)
	now := ss.now()
	s := &session{secret: secret, principal: p, csrf: auth.RandomString(43), minted: minted, created: now, seen: now}
	ss.mu.Lock()
	gone := ss.expire(now, nil)
	same, oldestOfToken := 0, ""
	for k, v := range ss.m {
		if v.principal.TokenID == p.TokenID {
			same++
			if oldestOfToken == "" || v.seen.Before(ss.m[oldestOfToken].seen) {
				oldestOfToken = k
			}
		}
	}
	if same >= maxTokenSessions {
		gone = append(gone, ss.m[oldestOfToken])
		delete(ss.m, oldestOfToken)
	}
	if len(ss.m) >= maxSessions {
		var oldest string
		for k, v := range ss.m {
			if oldest == "" || v.seen.Before(ss.m[oldest].seen) {
				oldest = k
			}
		}
		gone = append(gone, ss.m[oldest])
		delete(ss.m, oldest)
	}
	ss.m[sessionKey(id)] = s
	ss.mu.Unlock()
	ss.tell(gone)
	return id, s
}

// expire drops ended sessions, appending them to gone; mu is held.
func (ss *sessions) expire(now time.Time, gone []*session) []*session {
	ss.swept = now
	for k, s := range ss.m {
		if now.Sub(s.seen) > sessionIdle || now.Sub(s.created) > sessionLife {
			gone = append(gone, s)
			delete(ss.m, k)
		}
	}
	return gone
}

// get returns the live session of id and marks it used.
func (ss *sessions) get(id string) (*session, bool) {
	if id == "" {
		return nil, false
	}
	now := ss.now()
	ss.mu.Lock()
	var gone []*session
	if now.Sub(ss.swept) > sweepEvery {
		gone = ss.expire(now, nil)
	}
	s, ok := ss.m[sessionKey(id)]
	if ok && (now.Sub(s.seen) > sessionIdle || now.Sub(s.created) > sessionLife) {
		gone = append(gone, s)
		delete(ss.m, sessionKey(id))
		ok = false
	}
	if ok {
		s.seen = now
	}
	ss.mu.Unlock()
	ss.tell(gone)
	return s, ok
}

// end ends the session of id (replaced by a new sign-in, or its token
// refused), telling ended.
func (ss *sessions) end(id string) {
	if s := ss.take(id); s != nil {
		ss.tell([]*session{s})
	}
}

// take ends the session of id and returns it (nil: none), telling nobody:
// the caller cleans up (signing out).
func (ss *sessions) take(id string) *session {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	s := ss.m[sessionKey(id)]
	delete(ss.m, sessionKey(id))
	return s
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
