// Package audit is kiln's audit log of security-relevant events: tokens
// created and deleted, requests denied (Unauthenticated or
// PermissionDenied), and CI jobs admitted by a trust policy. A Recorder
// writes events through the store, lets organization tokens read them, and
// prunes them by age and count.
//
// Recording never fails the caller's operation: a failed write is logged.
// Events never carry secrets; as a second line of defence, Record redacts
// anything in Detail shaped like a kiln token or a JWT. The package depends
// on auth (for Principal) and errdefs, and on no transport or store: its
// Store interface is implemented by internal/store.
package audit

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/errdefs"
)

// Event kinds.
const (
	KindTokenCreated       = "token_created"
	KindTokenDeleted       = "token_deleted"
	KindDenied             = "denied"
	KindTrustPolicyMatched = "trust_policy_matched"
	// KindCustomerProjectCreated: a source build's customer id named no
	// project yet, so one was created.
	KindCustomerProjectCreated = "customer_project_created"
	// KindProjectEgressChanged: an organization token replaced a project's
	// egress allow-list (the private ranges its RUN steps may reach).
	KindProjectEgressChanged = "project_egress_changed"
)

// Kinds lists every kind, for validation and help texts.
var Kinds = []string{KindTokenCreated, KindTokenDeleted, KindDenied, KindTrustPolicyMatched, KindCustomerProjectCreated,
	KindProjectEgressChanged}

// Event is one thing that happened.
type Event struct {
	Kind      string
	OrgID     string // "" when unknown (a request with an unknown token)
	ProjectID string
	Actor     string // the acting token's id; "" when unauthenticated
	Detail    map[string]string
	At        time.Time // zero: now
}

// Entry is one stored event of the audit log. Kinds and what Detail holds
// are this package's; the store only keeps them.
type Entry struct {
	ID        string
	Kind      string
	OrgID     string // "" when the event cannot be attributed (an unknown token)
	ProjectID string
	Actor     string // the acting token's id, "" when unauthenticated
	Detail    map[string]string
	At        time.Time
}

// EntryQuery selects stored entries, oldest first.
type EntryQuery struct {
	// OrgIDs: entries of any of these organizations ("" selects the
	// unattributed ones). Required: an empty list selects nothing.
	OrgIDs []string
	Since  time.Time // entries at or after; zero: all
	Kinds  []string  // empty: every kind
	// AfterAt and AfterID continue a listing after the last entry of the
	// previous page (entries are ordered by (At, ID)).
	AfterAt time.Time
	AfterID string
	Limit   int
}

// Store is what the recorder needs of the store (internal/store
// implements it).
type Store interface {
	CreateAuditEvent(ctx context.Context, e Entry) error
	ListAuditEvents(ctx context.Context, q EntryQuery) ([]Entry, error)
	// PruneAuditEvents deletes events older than before, then the oldest
	// beyond the newest keep (keep <= 0: no count cap), and reports how
	// many it deleted.
	PruneAuditEvents(ctx context.Context, before time.Time, keep int) (int64, error)
}

// Config tunes a Recorder; zero values take the defaults noted.
type Config struct {
	Retention  time.Duration // events older than this are pruned; 0 → 90 days
	MaxEvents  int           // at most this many are kept (newest win); 0 → 1,000,000
	PruneEvery time.Duration // 0 → 1h
	// Denied events are rate limited, since anyone can cause them: a
	// bucket of DeniedBurst events refilled at DeniedPerSecond. Denials
	// beyond it are counted, and the next recorded one says how many were
	// dropped ("suppressed"). 0 → 200 and 2/s.
	DeniedBurst     int
	DeniedPerSecond float64
	// MatchEvery: a CI job authenticates with its OIDC token on every
	// request (health reports every 5 s); one trust_policy_matched event
	// per job identity and matched policies is recorded per MatchEvery.
	// 0 → 10m.
	MatchEvery time.Duration
	Now        func() time.Time
	// Exclusive, if set, runs each prune of Run under it
	// (cluster.Cluster.Exclusive): one replica prunes at a time, and one
	// whose turn it is not skips the tick (ran false).
	Exclusive func(ctx context.Context, name string, fn func(ctx context.Context) error) (ran bool, err error)
}

// Recorder records and lists audit events. A nil *Recorder records nothing.
type Recorder struct {
	st  Store
	cfg Config
	log *slog.Logger

	// mu guards the denied-event bucket and the recent matches.
	mu         sync.Mutex
	tokens     float64
	refilledAt time.Time
	suppressed int
	matches    map[string]time.Time // identity and policies → when last recorded
}

// maxRecentMatches bounds the match de-duplication memory.
const maxRecentMatches = 10000

// New returns a Recorder writing to st.
func New(st Store, cfg Config, logger *slog.Logger) *Recorder {
	if cfg.Retention <= 0 {
		cfg.Retention = 90 * 24 * time.Hour
	}
	if cfg.MaxEvents <= 0 {
		cfg.MaxEvents = 1_000_000
	}
	if cfg.PruneEvery <= 0 {
		cfg.PruneEvery = time.Hour
	}
	if cfg.DeniedBurst <= 0 {
		cfg.DeniedBurst = 200
	}
	if cfg.DeniedPerSecond <= 0 {
		cfg.DeniedPerSecond = 2
	}
	if cfg.MatchEvery <= 0 {
		cfg.MatchEvery = 10 * time.Minute
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Recorder{st: st, cfg: cfg, log: logger, tokens: float64(cfg.DeniedBurst), refilledAt: cfg.Now(),
		matches: map[string]time.Time{}}
}

// Limits on what one event stores, so that a hostile request cannot make
// the log large (a denied request's procedure name is client-chosen).
const (
	maxDetailKeys  = 16
	maxDetailValue = 512
	maxKeyLen      = 64
)

var (
	// kiln token secrets: kiln_<kind>_<40 alphanumerics>.
	tokenRe = regexp.MustCompile(`kiln_[a-z]{2,8}_[0-9A-Za-z]{16,}`)
	// JWTs (OIDC tokens): three base64url segments, the first a JSON header.
	jwtRe = regexp.MustCompile(`eyJ[0-9A-Za-z_-]{4,}\.[0-9A-Za-z_-]{4,}\.[0-9A-Za-z_-]*`)
	// Bearer values of any other shape.
	bearerRe = regexp.MustCompile(`(?i)(bearer\s+)\S+`)
)

// Redact removes anything secret-shaped from s, caps its length and drops
// control characters, so it is safe to store and to print on a terminal.
func Redact(s string) string {
	s = strings.ToValidUTF8(s, "?")
	s = tokenRe.ReplaceAllString(s, "[redacted token]")
	s = jwtRe.ReplaceAllString(s, "[redacted jwt]")
	s = bearerRe.ReplaceAllString(s, "${1}[redacted]")
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return ' '
		}
		return r
	}, s)
	if len(s) > maxDetailValue {
		cut := maxDetailValue
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut] + "…"
	}
	return s
}

func sanitize(detail map[string]string) map[string]string {
	if len(detail) == 0 {
		return nil
	}
	keys := make([]string, 0, len(detail))
	for k := range detail {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	out := map[string]string{}
	for _, k := range keys {
		if len(out) == maxDetailKeys {
			out["truncated"] = strconv.Itoa(len(keys) - maxDetailKeys)
			break
		}
		if len(k) > maxKeyLen {
			k = k[:maxKeyLen]
		}
		out[Redact(k)] = Redact(detail[k])
	}
	return out
}

// allowDenied takes a token from the denied-event bucket; when it is
// empty it counts the event as suppressed. It returns how many were
// suppressed since the last allowed one.
func (r *Recorder) allowDenied() (ok bool, suppressed int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.cfg.Now()
	r.tokens = min(float64(r.cfg.DeniedBurst), r.tokens+now.Sub(r.refilledAt).Seconds()*r.cfg.DeniedPerSecond)
	r.refilledAt = now
	if r.tokens < 1 {
		r.suppressed++
		return false, 0
	}
	r.tokens--
	suppressed, r.suppressed = r.suppressed, 0
	return true, suppressed
}

// Record writes e. It never fails: errors are logged, and denied events
// beyond the rate limit are only counted.
func (r *Recorder) Record(ctx context.Context, e Event) {
	if r == nil {
		return
	}
	if e.Kind == KindDenied {
		ok, suppressed := r.allowDenied()
		if !ok {
			return
		}
		if suppressed > 0 {
			if e.Detail == nil {
				e.Detail = map[string]string{}
			} else {
				e.Detail = maps.Clone(e.Detail)
			}
			e.Detail["suppressed"] = strconv.Itoa(suppressed)
		}
	}
	if e.At.IsZero() {
		e.At = r.cfg.Now()
	}
	se := Entry{
		ID:        "aud_" + strings.ToLower(auth.RandomString(16)),
		Kind:      Redact(e.Kind),
		OrgID:     Redact(e.OrgID),
		ProjectID: Redact(e.ProjectID),
		Actor:     Redact(e.Actor),
		Detail:    sanitize(e.Detail),
		At:        e.At.UTC(),
	}
	// Recording outlives a canceled request: the event happened.
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := r.st.CreateAuditEvent(wctx, se); err != nil {
		r.log.ErrorContext(ctx, "record audit event", "kind", se.Kind, "err", err)
	}
}

// AuthEvent is auth.Authenticator's Audit hook: it records the
// authenticator's events. attrs are slog-style key/value pairs; "org_id",
// "project_id" and "actor" fill the event's columns, the rest its detail.
//
//   - auth.AuditTrustPolicyMatched becomes KindTrustPolicyMatched, with the
//     CI job's identity ("oidc:<provider>:<subject>") as actor.
//   - auth.AuditOIDCDenied is not recorded here: the refused request is
//     recorded as KindDenied by the server with the same reason, once.
//   - Anything else is recorded under its own name.
func (r *Recorder) AuthEvent(ctx context.Context, event string, attrs ...any) {
	if r == nil || event == auth.AuditOIDCDenied {
		return
	}
	e := Event{Kind: event, Detail: map[string]string{}}
	for i := 0; i < len(attrs); i++ {
		var k string
		var v any
		switch a := attrs[i].(type) {
		case slog.Attr:
			k, v = a.Key, a.Value.Any()
		case string:
			if i+1 >= len(attrs) {
				k, v = "!BADKEY", a
			} else {
				k, v = a, attrs[i+1]
				i++
			}
		default:
			k, v = "!BADKEY", a
		}
		val := fmt.Sprint(v)
		switch k {
		case "org_id":
			e.OrgID = val
		case "project_id":
			e.ProjectID = val
		case "actor":
			e.Actor = val
		default:
			e.Detail[k] = val
		}
	}
	if event == auth.AuditTrustPolicyMatched {
		e.Kind = KindTrustPolicyMatched
		if e.Actor == "" && e.Detail["subject"] != "" {
			e.Actor = "oidc:" + e.Detail["provider"] + ":" + e.Detail["subject"]
		}
		if !r.firstMatch(e.Actor + "|" + e.Detail["issuer"] + "|" + e.Detail["trust_policy_ids"]) {
			return
		}
	}
	r.Record(ctx, e)
}

// firstMatch reports whether the match key was not recorded within
// MatchEvery, and notes it.
func (r *Recorder) firstMatch(key string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.cfg.Now()
	if at, ok := r.matches[key]; ok && now.Sub(at) < r.cfg.MatchEvery {
		return false
	}
	if len(r.matches) >= maxRecentMatches {
		for k, at := range r.matches {
			if now.Sub(at) >= r.cfg.MatchEvery {
				delete(r.matches, k)
			}
		}
		if len(r.matches) >= maxRecentMatches {
			clear(r.matches) // worst case: some repeats are recorded again
		}
	}
	r.matches[key] = now
	return true
}

// Query is what ListAuditEvents asks for.
type Query struct {
	Since     time.Time
	Kinds     []string
	PageSize  int    // 0 → 100; at most 1000
	PageToken string // from the previous page's answer
}

// List returns the events an organization token may read, oldest first:
// its organization's, plus the unattributed ones (requests with unknown
// tokens, which belong to no organization; kiln has one organization per
// server, so they are the server's). next is "" on the last page.
func (r *Recorder) List(ctx context.Context, p auth.Principal, q Query) (events []Entry, next string, err error) {
	if !p.IsOrg() {
		return nil, "", fmt.Errorf("reading the audit log needs an organization token: %w", errdefs.ErrPermission)
	}
	for _, k := range q.Kinds {
		if !slices.Contains(Kinds, k) {
			return nil, "", fmt.Errorf("unknown event kind %q (kinds: %s): %w", Redact(k), strings.Join(Kinds, ", "), errdefs.ErrInvalid)
		}
	}
	if len(q.Kinds) > len(Kinds) {
		return nil, "", fmt.Errorf("too many kinds: %w", errdefs.ErrInvalid)
	}
	size := q.PageSize
	if size <= 0 {
		size = 100
	}
	size = min(size, 1000)
	sq := EntryQuery{OrgIDs: []string{p.OrgID, ""}, Since: q.Since, Kinds: q.Kinds, Limit: size}
	if q.PageToken != "" {
		if sq.AfterAt, sq.AfterID, err = decodeCursor(q.PageToken); err != nil {
			return nil, "", err
		}
	}
	events, err = r.st.ListAuditEvents(ctx, sq)
	if err != nil {
		return nil, "", err
	}
	if len(events) == size {
		last := events[len(events)-1]
		next = encodeCursor(last.At, last.ID)
	}
	return events, next, nil
}

var cursorIDRe = regexp.MustCompile(`^aud_[0-9a-z]{1,64}$`)

// A page token is "<unix ms>.<event id>" of the last event returned.
func encodeCursor(at time.Time, id string) string {
	return strconv.FormatInt(at.UnixMilli(), 10) + "." + id
}

func decodeCursor(tok string) (time.Time, string, error) {
	bad := fmt.Errorf("malformed page token: %w", errdefs.ErrInvalid)
	msStr, id, ok := strings.Cut(tok, ".")
	if !ok || len(tok) > 100 || !cursorIDRe.MatchString(id) {
		return time.Time{}, "", bad
	}
	v, err := strconv.ParseInt(msStr, 10, 64)
	if err != nil || v <= 0 || v > 1<<50 {
		return time.Time{}, "", bad
	}
	return time.UnixMilli(v).UTC(), id, nil
}

// Prune deletes events beyond the retention age and count.
func (r *Recorder) Prune(ctx context.Context) (int64, error) {
	return r.st.PruneAuditEvents(ctx, r.cfg.Now().Add(-r.cfg.Retention), r.cfg.MaxEvents)
}

// Run prunes at start and then every PruneEvery until ctx ends; with
// Config.Exclusive, on one replica at a time.
func (r *Recorder) Run(ctx context.Context) {
	if r == nil {
		return
	}
	t := time.NewTicker(r.cfg.PruneEvery)
	defer t.Stop()
	for {
		var n int64
		prune := func(ctx context.Context) (err error) {
			n, err = r.Prune(ctx)
			return err
		}
		var err error
		if r.cfg.Exclusive != nil {
			_, err = r.cfg.Exclusive(ctx, "audit-prune", prune)
		} else {
			err = prune(ctx)
		}
		if err != nil && ctx.Err() == nil {
			r.log.Error("prune audit log", "err", err)
		} else if n > 0 {
			r.log.Info("pruned audit log", "deleted", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
