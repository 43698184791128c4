package audit_test

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/audit"
	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/store"
)

// clock is a settable time source.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Add(d time.Duration) { c.mu.Lock(); c.now = c.now.Add(d); c.mu.Unlock() }
func newClock() *clock               { return &clock{now: time.UnixMilli(1_750_000_000_000).UTC()} }
func orgOf(org string) auth.Principal {
	return auth.Principal{TokenID: "tok_admin", Kind: auth.TokenOrg, OrgID: org}
}
func kinds(es []audit.Entry) string {
	return join(es, func(e audit.Entry) string { return e.Kind })
}

func join(es []audit.Entry, f func(audit.Entry) string) string {
	var out []string
	for _, e := range es {
		out = append(out, f(e))
	}
	return strings.Join(out, ",")
}

func newRecorder(t *testing.T, cfg audit.Config) (*audit.Recorder, store.Store) {
	t.Helper()
	st, err := store.OpenSQLite(context.Background(), filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return audit.New(st, cfg, slog.New(slog.DiscardHandler)), st
}

func TestRecordAndListScopedToOrganization(t *testing.T) {
	c := newClock()
	r, _ := newRecorder(t, audit.Config{Now: c.Now})
	ctx := context.Background()
	r.Record(ctx, audit.Event{Kind: audit.KindTokenCreated, OrgID: "o1", ProjectID: "p1", Actor: "tok_admin", Detail: map[string]string{"token_id": "tok_new"}})
	c.Add(time.Second)
	r.Record(ctx, audit.Event{Kind: audit.KindDenied, Detail: map[string]string{"reason": "invalid or expired token"}}) // no org
	c.Add(time.Second)
	r.Record(ctx, audit.Event{Kind: audit.KindTokenDeleted, OrgID: "o2", Actor: "tok_other"})
	c.Add(time.Second)
	r.Record(ctx, audit.Event{Kind: audit.KindDenied, OrgID: "o1", Actor: "tok_prj"})

	got, next, err := r.List(ctx, orgOf("o1"), audit.Query{})
	if err != nil {
		t.Fatal(err)
	}
	if kinds(got) != "token_created,denied,denied" || next != "" {
		t.Errorf("o1 sees %s (next %q); want its two events and the unattributed denial", kinds(got), next)
	}
	if got[0].ProjectID != "p1" || got[0].Actor != "tok_admin" || got[0].Detail["token_id"] != "tok_new" || !got[0].At.Equal(c.Now().Add(-3*time.Second)) {
		t.Errorf("event = %+v", got[0])
	}
	if got, _, _ := r.List(ctx, orgOf("o2"), audit.Query{}); kinds(got) != "denied,token_deleted" {
		t.Errorf("o2 sees %s", kinds(got))
	}
	got, _, _ = r.List(ctx, orgOf("o1"), audit.Query{Kinds: []string{audit.KindDenied}, Since: c.Now().Add(-500 * time.Millisecond)})
	if len(got) != 1 || got[0].Actor != "tok_prj" {
		t.Errorf("kind+since filter = %+v", got)
	}

	for _, p := range []auth.Principal{
		{Kind: auth.TokenProject, OrgID: "o1", ProjectID: "p1"},
		{Kind: auth.TokenBuild, OrgID: "o1", ProjectID: "p1", BuildID: "b"},
		{Kind: auth.TokenOIDC, OrgID: "o1", ProjectIDs: []string{"p1"}},
		{},
	} {
		if _, _, err := r.List(ctx, p, audit.Query{}); !errors.Is(err, errdefs.ErrPermission) {
			t.Errorf("%s principal listing: %v, want ErrPermission", p.Kind, err)
		}
	}
	if _, _, err := r.List(ctx, orgOf("o1"), audit.Query{Kinds: []string{"denied'; DROP TABLE audit_events; --"}}); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("unknown kind: %v, want ErrInvalid", err)
	}
}

func TestListPages(t *testing.T) {
	c := newClock()
	r, _ := newRecorder(t, audit.Config{Now: c.Now})
	ctx := context.Background()
	for i := 0; i < 7; i++ {
		r.Record(ctx, audit.Event{Kind: audit.KindTokenCreated, OrgID: "o", Detail: map[string]string{"i": string(rune('a' + i))}})
		if i%2 == 0 {
			c.Add(time.Millisecond) // some events share a millisecond
		}
	}
	var seen []string
	tok := ""
	for pages := 0; ; pages++ {
		got, next, err := r.List(ctx, orgOf("o"), audit.Query{PageSize: 3, PageToken: tok})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range got {
			seen = append(seen, e.Detail["i"])
		}
		if next == "" || pages > 5 {
			break
		}
		tok = next
	}
	if len(seen) != 7 {
		t.Errorf("paged through %v, want all 7 events once", seen)
	}
	for _, bad := range []string{"x", "1.", ".aud_a", "-1.aud_a", "1.AUD_A", "1.aud_a;--", "99999999999999999999.aud_a", strings.Repeat("1", 200) + ".aud_a", "1.aud_a.b"} {
		if _, _, err := r.List(ctx, orgOf("o"), audit.Query{PageToken: bad}); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("page token %q: %v, want ErrInvalid", bad, err)
		}
	}
}

func TestRecordRedactsSecretsAndBoundsSize(t *testing.T) {
	c := newClock()
	r, _ := newRecorder(t, audit.Config{Now: c.Now})
	ctx := context.Background()
	secret := "kiln_prj_" + strings.Repeat("Ab3", 14)
	jwt := "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJyZXBvOmFjbWUvYXBwIn0.c2lnbmF0dXJl"
	detail := map[string]string{
		"reason":  "token " + secret + " refused",
		"header":  "Bearer " + jwt,
		"auth":    "bearer opaque-value-123",
		"escape":  "line1\nline2\x1b[31mred\x00",
		"long":    strings.Repeat("x", 10000),
		"invalid": "\xff\xfe",
	}
	for i := 0; i < 30; i++ {
		detail["k"+strings.Repeat("z", i)] = "v"
	}
	r.Record(ctx, audit.Event{Kind: audit.KindDenied, OrgID: "o", Actor: secret, Detail: detail})
	got, _, _ := r.List(ctx, orgOf("o"), audit.Query{})
	if len(got) != 1 {
		t.Fatalf("events = %+v", got)
	}
	e := got[0]
	all := e.Actor
	for k, v := range e.Detail {
		all += k + "=" + v + " "
	}
	for _, leak := range []string{secret, jwt, "opaque-value-123", "\n", "\x1b", "\x00", "\xff"} {
		if strings.Contains(all, leak) {
			t.Errorf("stored event contains %q: %q", leak, all)
		}
	}
	if len(e.Detail) > 17 || e.Detail["truncated"] == "" {
		t.Errorf("detail has %d keys (truncated=%q); want at most 16 + a truncation note", len(e.Detail), e.Detail["truncated"])
	}
	if v, ok := e.Detail["long"]; ok && len(v) > 600 {
		t.Errorf("a 10000-byte value was stored with %d bytes", len(v))
	}
}

func TestDeniedEventsAreRateLimited(t *testing.T) {
	c := newClock()
	r, _ := newRecorder(t, audit.Config{Now: c.Now, DeniedBurst: 3, DeniedPerSecond: 1})
	ctx := context.Background()
	for i := 0; i < 10; i++ {
		r.Record(ctx, audit.Event{Kind: audit.KindDenied, OrgID: "o"})
		c.Add(time.Millisecond) // keeps the listing order stable; refills 0.001 each
	}
	// Other kinds are never limited.
	r.Record(ctx, audit.Event{Kind: audit.KindTokenCreated, OrgID: "o"})
	got, _, _ := r.List(ctx, orgOf("o"), audit.Query{})
	if kinds(got) != "denied,denied,denied,token_created" {
		t.Fatalf("after a burst of 10: %s; want 3 denials and the token event", kinds(got))
	}
	c.Add(1500 * time.Millisecond)
	r.Record(ctx, audit.Event{Kind: audit.KindDenied, OrgID: "o", Detail: map[string]string{"n": "late"}})
	got, _, _ = r.List(ctx, orgOf("o"), audit.Query{Kinds: []string{audit.KindDenied}})
	if last := got[len(got)-1]; len(got) != 4 || last.Detail["suppressed"] != "7" || last.Detail["n"] != "late" {
		t.Errorf("after refill: %+v; want a 4th denial saying 7 were suppressed", got)
	}
}

func TestPruneByAgeAndCount(t *testing.T) {
	c := newClock()
	r, _ := newRecorder(t, audit.Config{Now: c.Now, Retention: time.Hour, MaxEvents: 3})
	ctx := context.Background()
	r.Record(ctx, audit.Event{Kind: audit.KindTokenCreated, OrgID: "o", Detail: map[string]string{"n": "old"}})
	c.Add(2 * time.Hour)
	for _, n := range []string{"1", "2", "3", "4"} {
		r.Record(ctx, audit.Event{Kind: audit.KindTokenCreated, OrgID: "o", Detail: map[string]string{"n": n}})
		c.Add(time.Second)
	}
	n, err := r.Prune(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got, _, _ := r.List(ctx, orgOf("o"), audit.Query{})
	if n != 2 || join(got, func(e audit.Entry) string { return e.Detail["n"] }) != "2,3,4" {
		t.Errorf("pruned %d, left %s; want 2 pruned (the old one, then the oldest beyond 3)", n, join(got, func(e audit.Entry) string { return e.Detail["n"] }))
	}
}

func TestAuthEventHook(t *testing.T) {
	c := newClock()
	r, _ := newRecorder(t, audit.Config{Now: c.Now})
	ctx := context.Background()
	r.AuthEvent(ctx, auth.AuditTrustPolicyMatched, "provider", "github", "subject", "repo:acme/app:ref:refs/heads/main",
		"owner", "acme", "repo", "acme/app", "issuer", "https://token.actions.githubusercontent.com", "org_id", "o",
		"project_ids", "p1,p2", "trust_policy_ids", "tp1")
	c.Add(time.Second)
	r.AuthEvent(ctx, auth.AuditOIDCDenied, "reason", "expired") // recorded by the server as a denial instead
	r.AuthEvent(ctx, audit.KindDenied, "org_id", "o", "actor", "tok_x", "project_id", "p1", "procedure", "/a.B/C", "dangling")
	got, _, _ := r.List(ctx, orgOf("o"), audit.Query{})
	if kinds(got) != "trust_policy_matched,denied" {
		t.Fatalf("events = %s", kinds(got))
	}
	if m := got[0]; m.Actor != "oidc:github:repo:acme/app:ref:refs/heads/main" || m.Detail["project_ids"] != "p1,p2" || m.OrgID != "o" {
		t.Errorf("trust-policy event = %+v", m)
	}
	if d := got[1]; d.Actor != "tok_x" || d.ProjectID != "p1" || d.Detail["procedure"] != "/a.B/C" || d.Detail["!BADKEY"] != "dangling" {
		t.Errorf("denied event = %+v", d)
	}
	// A CI job authenticates on every request: one match event per job
	// identity and policies per MatchEvery (10m by default).
	match := []any{"provider", "github", "subject", "repo:acme/app:ref:refs/heads/main", "org_id", "o", "trust_policy_ids", "tp1",
		"issuer", "https://token.actions.githubusercontent.com"}
	for i := 0; i < 5; i++ {
		c.Add(5 * time.Second)
		r.AuthEvent(ctx, auth.AuditTrustPolicyMatched, match...)
	}
	c.Add(11 * time.Minute)
	r.AuthEvent(ctx, auth.AuditTrustPolicyMatched, match...)
	got, _, _ = r.List(ctx, orgOf("o"), audit.Query{Kinds: []string{audit.KindTrustPolicyMatched}})
	if len(got) != 2 {
		t.Errorf("%d trust_policy_matched events after 7 matches of one job (the first at t0, 5 within 10m, one after); want 2", len(got))
	}

	var nilRecorder *audit.Recorder
	nilRecorder.Record(ctx, audit.Event{Kind: audit.KindDenied}) // must not panic
	nilRecorder.AuthEvent(ctx, audit.KindDenied)
}

// With Exclusive, Run prunes only on the replica holding the lock: while
// another one holds it, nothing is pruned here.
func TestRunPrunesOnOneReplicaAtATime(t *testing.T) {
	c := newClock()
	var held sync.Mutex // another replica's prune, while locked
	var tries, ran int
	var mu sync.Mutex
	exclusive := func(ctx context.Context, name string, fn func(context.Context) error) (bool, error) {
		mu.Lock()
		tries++
		mu.Unlock()
		if name != "audit-prune" || !held.TryLock() {
			return false, nil
		}
		defer held.Unlock()
		mu.Lock()
		ran++
		mu.Unlock()
		return true, fn(ctx)
	}
	r, _ := newRecorder(t, audit.Config{Now: c.Now, Retention: time.Hour, PruneEvery: 5 * time.Millisecond, Exclusive: exclusive})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r.Record(ctx, audit.Event{Kind: audit.KindTokenCreated, OrgID: "o"})
	c.Add(2 * time.Hour)
	held.Lock()
	done := make(chan struct{})
	go func() { r.Run(ctx); close(done) }()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		mu.Lock()
		n := tries
		mu.Unlock()
		if n >= 3 || time.Now().After(deadline) {
			break
		}
	}
	mu.Lock()
	ranHeld := ran
	mu.Unlock()
	if got, _, _ := r.List(ctx, orgOf("o"), audit.Query{}); len(got) != 1 || ranHeld != 0 {
		t.Fatalf("pruned while another replica held the lock (ran %d, %d events left)", ranHeld, len(got))
	}
	held.Unlock()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if got, _, _ := r.List(ctx, orgOf("o"), audit.Query{}); len(got) == 0 {
			break
		}
	}
	cancel()
	<-done
	if got, _, _ := r.List(context.Background(), orgOf("o"), audit.Query{}); len(got) != 0 {
		t.Fatalf("%d events left once the lock was free", len(got))
	}
}
