// Package login is the device-login domain behind depot.cli.v1beta1's
// LoginService: a client with no token starts a login, an administrator
// approves it, and the client collects a new organization token exactly
// once. It knows nothing of Connect or HTTP; the handlers in internal/api
// pass ids and the approving auth.Principal and get errdefs kinds back.
//
// A login has two ids, so that the URL shown to people is not the secret:
//
//   - the id (Started.ID, 32 characters [0-9A-Za-z], ~190 bits) is what the
//     client waits on with Finish. It collects the token, so only its
//     SHA-256 is stored, like a token secret;
//   - the approval id (26 characters of a 32-letter alphabet, 130 bits) is
//     the last segment of the approve URL and what `kiln login --approve`
//     takes. Knowing it grants nothing: approving needs an organization
//     token, and the token goes to whoever holds the id.
//
// The code people compare (the terminal's against the approval page's) is
// the approval id's first eight letters, "ABCD-EFGH".
//
// Logins live in the store (so several control-plane replicas can share
// them). A waiter is woken at once by a change made in this process, and
// re-reads the store every PollInterval to see changes made elsewhere.
package login

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/project"
)

// Store is what the login service needs of kiln's store (internal/store
// implements it).
type Store interface {
	// CreateLogin fails with ErrAlreadyExists when IDHash or ApprovalID is
	// taken.
	CreateLogin(ctx context.Context, l Login) error
	GetLogin(ctx context.Context, idHash string) (Login, error)
	GetLoginByApproval(ctx context.Context, approvalID string) (Login, error)
	// UpdateLogin reads the login, applies fn and writes it back in one
	// transaction (so exactly one of several racing callers sees a given
	// status). If fn returns an error nothing is written.
	UpdateLogin(ctx context.Context, idHash string, fn func(*Login) error) (Login, error)
	// CountLogins counts logins that expire after t (the live ones when t
	// is now).
	CountLogins(ctx context.Context, expiresAfter time.Time) (int, error)
	// CountPendingLogins counts the pending logins of one source that
	// expire after t.
	CountPendingLogins(ctx context.Context, source string, expiresAfter time.Time) (int, error)
	// DeleteLogins removes logins that expired before t and reports how many.
	DeleteLogins(ctx context.Context, expiredBefore time.Time) (int, error)

	CreateToken(ctx context.Context, t auth.Token) error
}

// Status is where a login is. A login is created pending and moves once to
// approved or denied; an approved login moves once to finished when its
// client collects the token. Expiry is not a stored status: a pending or
// approved login past ExpiresAt is expired (Service decides; Lookup
// reports it as StatusExpired).
type Status string

// Login statuses.
const (
	StatusPending  Status = "pending"
	StatusApproved Status = "approved"
	StatusDenied   Status = "denied"
	StatusFinished Status = "finished"
	// StatusExpired is Info.Status of a login that expired before it
	// ended; it is never stored.
	StatusExpired Status = "expired"
)

// Login is one device login (depot.cli.v1beta1 StartLogin/FinishLogin).
type Login struct {
	// IDHash is the SHA-256 (hex) of the id the client waits on. The id
	// itself collects a token, so like a token secret it is never stored.
	IDHash string
	// ApprovalID is the handle in the approve URL and `kiln login --approve`.
	ApprovalID string
	Status     Status
	OrgID      string // approved and finished: the approving admin's organization
	ApprovedBy string // approved and finished: the approving admin's token id
	TokenID    string // approved and finished: the id the minted token gets
	Source     string // where it was started from (Source's form: IPv4 address, IPv6 /64)
	CreatedAt  time.Time
	ExpiresAt  time.Time
	UpdatedAt  time.Time
}

// Config tunes the service; zero values take the defaults in brackets.
type Config struct {
	TTL          time.Duration // how long a login may wait for approval [10m]
	TokenTTL     time.Duration // lifetime of the token a login mints, from approval [30 days]
	MaxPending   int           // live (unexpired) logins at once; more → ErrExhausted [1000]
	MaxWaiters   int           // Finish calls waiting at once in this process [256]
	MaxPerLogin  int           // Finish calls waiting on one login [4]
	PollInterval time.Duration // how often a waiter re-reads the store [2s]
	// Keep is how long an ended or expired login is remembered, so a late
	// Finish hears "expired" or "already finished" rather than "not found" [1h].
	Keep time.Duration
	Now  func() time.Time

	// MaxPendingPerSource bounds the pending logins started from one
	// address (see Source), so one caller cannot take every slot of
	// MaxPending from the others [10].
	MaxPendingPerSource int
}

// Service runs device logins.
type Service struct {
	store  Store
	cfg    Config
	logger *slog.Logger

	// startMu makes Start's count and create one step in this process, so
	// concurrent starts from one source cannot all see room.
	startMu sync.Mutex

	// mu guards the fields below. watches holds, per login (by id hash)
	// with at least one waiter, a channel closed on the next change this
	// process makes to that login; lastSweep is when Start last forgot
	// ended logins.
	mu        sync.Mutex
	waiters   int
	watches   map[string]*watch
	lastSweep time.Time

	closed    chan struct{} // closed by Close: waiters return ErrUnavailable
	closeOnce sync.Once
}

type watch struct {
	n  int           // waiters on this login
	ch chan struct{} // closed and replaced by notify
}

// New returns a Service over st.
func New(st Store, cfg Config, logger *slog.Logger) *Service {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&cfg.TTL, 10*time.Minute)
	def(&cfg.TokenTTL, 30*24*time.Hour)
	def(&cfg.PollInterval, 2*time.Second)
	def(&cfg.Keep, time.Hour)
	if cfg.MaxPending <= 0 {
		cfg.MaxPending = 1000
	}
	if cfg.MaxPendingPerSource <= 0 {
		cfg.MaxPendingPerSource = 10
	}
	if cfg.MaxWaiters <= 0 {
		cfg.MaxWaiters = 256
	}
	if cfg.MaxPerLogin <= 0 {
		cfg.MaxPerLogin = 4
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if logger == nil {
		logger = slog.Default()
	}
	return &Service{store: st, cfg: cfg, logger: logger, watches: map[string]*watch{}, closed: make(chan struct{})}
}

// Close ends every waiting Finish with ErrUnavailable, so a server shutting
// down need not wait for approvals. Logins stay in the store: a client may
// finish the same login against the restarted server.
func (s *Service) Close() { s.closeOnce.Do(func() { close(s.closed) }) }

const (
	idLen       = 32
	approvalLen = 26
	// approvalAlphabet has 32 letters, none easily confused (no 0 o 1 l).
	approvalAlphabet = "abcdefghijkmnpqrstuvwxyz23456789"
)

// ValidID reports whether id has the shape of a login id.
func ValidID(id string) bool {
	if len(id) != idLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z') {
			return false
		}
	}
	return true
}

// ValidApprovalID reports whether id has the shape of an approval id.
func ValidApprovalID(id string) bool {
	if len(id) != approvalLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		if strings.IndexByte(approvalAlphabet, id[i]) < 0 {
			return false
		}
	}
	return true
}

// Code is the short code people compare; "" for a malformed approval id.
func Code(approvalID string) string {
	if !ValidApprovalID(approvalID) {
		return ""
	}
	return strings.ToUpper(approvalID[:4] + "-" + approvalID[4:8])
}

func newApprovalID() string {
	b := make([]byte, approvalLen)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	for i := range b {
		b[i] = approvalAlphabet[b[i]&31] // 256 is a multiple of 32: uniform
	}
	return string(b)
}

// TokenTTL is how long a token minted by a login stays valid.
func (s *Service) TokenTTL() time.Duration { return s.cfg.TokenTTL }

// Started is a new login.
type Started struct {
	ID         string // the secret the client finishes with
	ApprovalID string
	Code       string
	ExpiresAt  time.Time
}

func (s *Service) now() time.Time { return s.cfg.Now().UTC() }

// Start opens a pending login for a caller at peer (its network address,
// "host:port" or "host"). It needs no principal: the caller has no token
// yet. Since anyone may call it, live logins are capped (MaxPending), and
// so are the pending logins of one source (MaxPendingPerSource; see
// Source), so that one address filling its share leaves the others theirs.
func (s *Service) Start(ctx context.Context, peer string) (Started, error) {
	now := s.now()
	s.sweep(ctx, now)
	source := Source(peer)
	s.startMu.Lock()
	defer s.startMu.Unlock()
	n, err := s.store.CountPendingLogins(ctx, source, now)
	if err != nil {
		return Started{}, fmt.Errorf("count logins: %w", err)
	}
	if n >= s.cfg.MaxPendingPerSource {
		return Started{}, fmt.Errorf("%d logins started from your address are waiting for approval, the most one address may have; have one approved or denied, or wait up to %s for them to expire: %w",
			n, s.cfg.TTL, errdefs.ErrExhausted)
	}
	if n, err = s.store.CountLogins(ctx, now); err != nil {
		return Started{}, fmt.Errorf("count logins: %w", err)
	}
	if n >= s.cfg.MaxPending {
		return Started{}, fmt.Errorf("too many logins are waiting for approval; try again in a few minutes: %w", errdefs.ErrExhausted)
	}
	st := Started{ID: auth.RandomString(idLen), ApprovalID: newApprovalID(), ExpiresAt: now.Add(s.cfg.TTL)}
	st.Code = Code(st.ApprovalID)
	err = s.store.CreateLogin(ctx, Login{IDHash: auth.Hash(st.ID), ApprovalID: st.ApprovalID,
		Status: StatusPending, Source: source, CreatedAt: now, ExpiresAt: st.ExpiresAt, UpdatedAt: now})
	if err != nil {
		return Started{}, fmt.Errorf("create login: %w", err)
	}
	s.logger.InfoContext(ctx, "device login started", "approval_id", st.ApprovalID, "source", source, "expires_at", st.ExpiresAt)
	return st, nil
}

// Source is the key logins are counted under for a peer address: an IPv4
// address as it is, an IPv6 address by its /64 (one host usually holds a
// whole /64), "unknown" for what does not parse. kiln takes the address of
// the connection: behind a reverse proxy every login shares the proxy's.
func Source(peer string) string {
	host := peer
	if h, _, err := net.SplitHostPort(peer); err == nil {
		host = h
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return "unknown"
	}
	a = a.Unmap().WithZone("")
	if a.Is4() {
		return a.String()
	}
	return netip.PrefixFrom(a, 64).Masked().String()
}

// sweep forgets logins ended longer than Keep ago, at most once a minute.
func (s *Service) sweep(ctx context.Context, now time.Time) {
	s.mu.Lock()
	due := now.Sub(s.lastSweep) >= time.Minute
	if due {
		s.lastSweep = now
	}
	s.mu.Unlock()
	if !due {
		return
	}
	if n, err := s.store.DeleteLogins(ctx, now.Add(-s.cfg.Keep)); err != nil {
		s.logger.WarnContext(ctx, "forget expired logins", "err", err)
	} else if n > 0 {
		s.logger.DebugContext(ctx, "forgot expired logins", "count", n)
	}
}

var (
	errUnknown  = fmt.Errorf("login request not found (start a new one with `kiln login`): %w", errdefs.ErrNotFound)
	errExpired  = fmt.Errorf("login request expired before it was approved (start a new one with `kiln login`): %w", errdefs.ErrExpired)
	errDenied   = fmt.Errorf("login request was denied by an administrator: %w", errdefs.ErrPermission)
	errFinished = fmt.Errorf("login request already completed: its token was handed out once: %w", errdefs.ErrFailedPrecondition)
)

func (s *Service) expired(l Login) bool {
	return (l.Status == StatusPending || l.Status == StatusApproved) && s.now().After(l.ExpiresAt)
}

// Finish waits until the login identified by id is approved, then mints
// its token and returns the secret. Exactly one Finish of a login gets the
// token; any other answers errFinished. It ends early with the login's
// fate: ErrNotFound (unknown id), ErrExpired, ErrPermission (denied),
// ErrUnavailable after Close, or ctx's error when the caller goes away (in
// the last two cases the login stays collectable).
func (s *Service) Finish(ctx context.Context, id string) (string, error) {
	if !ValidID(id) {
		return "", errUnknown
	}
	hash := auth.Hash(id)
	if err := s.addWaiter(hash); err != nil {
		return "", err
	}
	defer s.removeWaiter(hash)

	poll := time.NewTimer(0)
	defer poll.Stop()
	for {
		// Take the channel before reading: a change after the read still
		// closes this channel and wakes us.
		changed := s.changed(hash)
		l, err := s.store.GetLogin(ctx, hash)
		if errdefs.IsNotFound(err) {
			return "", errUnknown
		}
		if err != nil {
			return "", fmt.Errorf("read login: %w", err)
		}
		if s.expired(l) {
			return "", errExpired
		}
		switch l.Status {
		case StatusDenied:
			return "", errDenied
		case StatusFinished:
			return "", errFinished
		case StatusApproved:
			return s.collect(ctx, hash)
		}
		// Wake at the next poll or just after expiry, whichever is first.
		poll.Reset(min(s.cfg.PollInterval, l.ExpiresAt.Sub(s.now())+time.Millisecond))
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-s.closed:
			return "", fmt.Errorf("server is shutting down; the login can be finished once it is back: %w", errdefs.ErrUnavailable)
		case <-changed:
		case <-poll.C:
		}
	}
}

// collect claims an approved login (one caller wins the transaction) and
// mints its token. If minting fails after the claim the login is spent and
// the client must start again; no secret was handed out or stored.
func (s *Service) collect(ctx context.Context, hash string) (string, error) {
	var approvedAt time.Time
	l, err := s.store.UpdateLogin(ctx, hash, func(l *Login) error {
		if s.expired(*l) {
			return errExpired
		}
		switch l.Status {
		case StatusDenied:
			return errDenied
		case StatusFinished:
			return errFinished
		case StatusPending:
			return fmt.Errorf("login request not approved yet: %w", errdefs.ErrFailedPrecondition)
		}
		approvedAt = l.UpdatedAt
		l.Status, l.UpdatedAt = StatusFinished, s.now()
		return nil
	})
	if err != nil {
		return "", err
	}
	s.notify(hash)
	secret, secretHash := auth.NewSecret(auth.TokenOrg)
	t := auth.Token{ID: l.TokenID, Kind: auth.TokenOrg, OrgID: l.OrgID, SecretHash: secretHash,
		Description: "device login " + approvedAt.Format(time.DateOnly),
		CreatedAt:   l.UpdatedAt, ExpiresAt: approvedAt.Add(s.cfg.TokenTTL)}
	if err := s.store.CreateToken(ctx, t); err != nil {
		return "", fmt.Errorf("mint login token: %w", err)
	}
	s.logger.InfoContext(ctx, "device login finished", "approval_id", l.ApprovalID, "org_id", l.OrgID, "token_id", t.ID)
	return secret, nil
}

func (s *Service) addWaiter(hash string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.waiters >= s.cfg.MaxWaiters {
		return fmt.Errorf("too many clients are waiting for a login; try again later: %w", errdefs.ErrExhausted)
	}
	w := s.watches[hash]
	if w == nil {
		w = &watch{ch: make(chan struct{})}
		s.watches[hash] = w
	}
	if w.n >= s.cfg.MaxPerLogin {
		if w.n == 0 {
			delete(s.watches, hash)
		}
		return fmt.Errorf("too many clients are waiting on this login: %w", errdefs.ErrExhausted)
	}
	w.n++
	s.waiters++
	return nil
}

func (s *Service) removeWaiter(hash string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.waiters--
	if w := s.watches[hash]; w != nil {
		if w.n--; w.n == 0 {
			delete(s.watches, hash)
		}
	}
}

// changed returns a channel closed on this process's next change to the
// login; the caller is a registered waiter, so the watch exists.
func (s *Service) changed(hash string) <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.watches[hash].ch
}

// notify wakes the waiters of a login after a change.
func (s *Service) notify(hash string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if w := s.watches[hash]; w != nil {
		close(w.ch)
		w.ch = make(chan struct{})
	}
}

// Approved is what an approval decided.
type Approved struct {
	Code           string
	OrgID          string
	TokenID        string    // the id the client's token will have
	TokenExpiresAt time.Time // when that token stops working
}

func requireOrg(p auth.Principal, what string) error {
	if !p.IsOrg() {
		return fmt.Errorf("%s a login needs an organization token: %w", what, errdefs.ErrPermission)
	}
	return nil
}

// decide moves a pending login to approved or denied.
func (s *Service) decide(ctx context.Context, p auth.Principal, approvalID string, status Status) (Login, error) {
	if !ValidApprovalID(approvalID) {
		return Login{}, errUnknown
	}
	l, err := s.store.GetLoginByApproval(ctx, approvalID)
	if errdefs.IsNotFound(err) {
		return Login{}, errUnknown
	}
	if err != nil {
		return Login{}, fmt.Errorf("read login: %w", err)
	}
	l, err = s.store.UpdateLogin(ctx, l.IDHash, func(l *Login) error {
		if s.expired(*l) {
			return errExpired
		}
		if l.Status != StatusPending {
			return fmt.Errorf("login request %s was already %s: %w", Code(l.ApprovalID), l.Status, errdefs.ErrFailedPrecondition)
		}
		l.Status, l.UpdatedAt = status, s.now()
		if status == StatusApproved {
			l.OrgID, l.ApprovedBy, l.TokenID = p.OrgID, p.TokenID, "tok_"+project.NewID()
		}
		return nil
	})
	if err != nil {
		return Login{}, err
	}
	s.notify(l.IDHash)
	s.logger.InfoContext(ctx, "device login "+string(status), "approval_id", approvalID, "org_id", p.OrgID, "by_token_id", p.TokenID, "token_id", l.TokenID)
	return l, nil
}

// Approve approves a pending login for the principal's organization: its
// client receives a new organization token of that organization, valid
// TokenTTL from now. Only organization tokens may approve.
func (s *Service) Approve(ctx context.Context, p auth.Principal, approvalID string) (Approved, error) {
	if err := requireOrg(p, "approving"); err != nil {
		return Approved{}, err
	}
	l, err := s.decide(ctx, p, approvalID, StatusApproved)
	if err != nil {
		return Approved{}, err
	}
	return Approved{Code: Code(l.ApprovalID), OrgID: l.OrgID, TokenID: l.TokenID, TokenExpiresAt: l.UpdatedAt.Add(s.cfg.TokenTTL)}, nil
}

// Deny ends a pending login; its client hears ErrPermission.
func (s *Service) Deny(ctx context.Context, p auth.Principal, approvalID string) (string, error) {
	if err := requireOrg(p, "denying"); err != nil {
		return "", err
	}
	l, err := s.decide(ctx, p, approvalID, StatusDenied)
	if err != nil {
		return "", err
	}
	return Code(l.ApprovalID), nil
}

// Info is what the approval page shows about a login.
type Info struct {
	ApprovalID string
	Code       string
	Status     Status // a stored status, or StatusExpired
	ExpiresAt  time.Time
}

// Lookup describes a login by its approval id; it needs no principal (the
// page shows only the code, the status and the expiry).
func (s *Service) Lookup(ctx context.Context, approvalID string) (Info, error) {
	if !ValidApprovalID(approvalID) {
		return Info{}, errUnknown
	}
	l, err := s.store.GetLoginByApproval(ctx, approvalID)
	if errdefs.IsNotFound(err) {
		return Info{}, errUnknown
	}
	if err != nil {
		return Info{}, fmt.Errorf("read login: %w", err)
	}
	info := Info{ApprovalID: l.ApprovalID, Code: Code(l.ApprovalID), Status: l.Status, ExpiresAt: l.ExpiresAt}
	if s.expired(l) {
		info.Status = StatusExpired
	}
	return info, nil
}
