package login_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/login"
	"github.com/kiln-dev/kiln/internal/project"
	"github.com/kiln-dev/kiln/internal/store"
)

// clock is a settable test clock, safe for concurrent use.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func newStore(t *testing.T) *store.SQLite {
	t.Helper()
	st, err := store.OpenSQLite(context.Background(), filepath.Join(t.TempDir(), "kiln.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	ctx := context.Background()
	st.CreateOrganization(ctx, project.Organization{ID: "org_a", Name: "a", CreatedAt: time.Now()})
	st.CreateOrganization(ctx, project.Organization{ID: "org_b", Name: "b", CreatedAt: time.Now()})
	return st
}

var (
	admin    = auth.Principal{TokenID: "tok_admin", Kind: auth.TokenOrg, OrgID: "org_a"}
	prjToken = auth.Principal{TokenID: "tok_prj", Kind: auth.TokenProject, OrgID: "org_a", ProjectID: "p1"}
)

// finishAsync runs Finish in the background.
func finishAsync(ctx context.Context, s *login.Service, id string) <-chan result {
	out := make(chan result, 1)
	go func() {
		tok, err := s.Finish(ctx, id)
		out <- result{tok, err}
	}()
	return out
}

type result struct {
	token string
	err   error
}

func within(t *testing.T, c <-chan result, d time.Duration, what string) result {
	t.Helper()
	select {
	case r := <-c:
		return r
	case <-time.After(d):
		t.Fatalf("%s: Finish did not return within %s", what, d)
		return result{}
	}
}

func notYet(t *testing.T, c <-chan result, what string) {
	t.Helper()
	select {
	case r := <-c:
		t.Fatalf("%s: Finish returned early: %+v", what, r)
	case <-time.After(100 * time.Millisecond):
	}
}

func TestApproveThenFinishOnce(t *testing.T) {
	ctx := context.Background()
	st := newStore(t)
	// An hour between polls: only the in-process wake-up can end the wait.
	s := login.New(st, login.Config{PollInterval: time.Hour}, quiet)
	started, err := s.Start(ctx, testPeer)
	if err != nil {
		t.Fatal(err)
	}
	if started.Code != strings.ToUpper(started.ApprovalID[:4]+"-"+started.ApprovalID[4:8]) {
		t.Errorf("code %q does not match approval id %q", started.Code, started.ApprovalID)
	}
	if info, err := s.Lookup(ctx, started.ApprovalID); err != nil || info.Status != login.StatusPending || info.Code != started.Code {
		t.Errorf("Lookup = %+v, %v", info, err)
	}

	waiting := finishAsync(ctx, s, started.ID)
	notYet(t, waiting, "pending login")

	if _, err := s.Approve(ctx, prjToken, started.ApprovalID); !errors.Is(err, errdefs.ErrPermission) {
		t.Errorf("a project token approved a login: %v", err)
	}
	approved, err := s.Approve(ctx, admin, started.ApprovalID)
	if err != nil {
		t.Fatal(err)
	}
	if approved.Code != started.Code || approved.OrgID != "org_a" || !strings.HasPrefix(approved.TokenID, "tok_") {
		t.Errorf("Approve = %+v", approved)
	}
	if got := time.Until(approved.TokenExpiresAt); got < 29*24*time.Hour || got > 31*24*time.Hour {
		t.Errorf("token expires in %s, want about 30 days", got)
	}
	if _, err := s.Approve(ctx, admin, started.ApprovalID); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("second Approve: %v, want ErrFailedPrecondition", err)
	}
	if _, err := s.Deny(ctx, admin, started.ApprovalID); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("Deny after Approve: %v, want ErrFailedPrecondition", err)
	}

	r := within(t, waiting, 5*time.Second, "approved login")
	if r.err != nil {
		t.Fatalf("Finish: %v", r.err)
	}
	// The token is a new organization token of the approver's org.
	p, err := (&auth.Authenticator{Store: st}).Authenticate(ctx, r.token)
	if err != nil {
		t.Fatalf("minted token does not authenticate: %v", err)
	}
	if !p.IsOrg() || p.OrgID != "org_a" || p.TokenID != approved.TokenID {
		t.Errorf("minted token principal = %+v, want an org token of org_a with id %s", p, approved.TokenID)
	}
	tok, _ := st.GetToken(ctx, approved.TokenID)
	if !strings.HasPrefix(tok.Description, "device login 20") || !tok.ExpiresAt.Equal(approved.TokenExpiresAt.Truncate(time.Millisecond)) {
		t.Errorf("minted token = %+v", tok)
	}

	// Finished once: the token is never handed out again.
	if _, err := s.Finish(ctx, started.ID); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("second Finish: %v, want ErrFailedPrecondition", err)
	}
	if info, _ := s.Lookup(ctx, started.ApprovalID); info.Status != login.StatusFinished {
		t.Errorf("Lookup after finish: %+v", info)
	}
	if waiters, watches := s.WaitersLeft(); waiters != 0 || watches != 0 {
		t.Errorf("waiters left behind: %d, %d logins watched", waiters, watches)
	}
}

func TestUnknownAndMalformedIDs(t *testing.T) {
	ctx := context.Background()
	s := login.New(newStore(t), login.Config{}, quiet)
	started, _ := s.Start(ctx, testPeer)
	hostile := []string{
		"", "x", strings.Repeat("a", 31), strings.Repeat("a", 33), strings.Repeat("a", 100000),
		"../../../../etc/passwd", "<script>alert(1)</script>", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\x00",
		"ааааааааааааааааааааааааааааааа", // Cyrillic
		strings.Repeat("A", 26),
		strings.ToUpper(started.ID[:1]) + started.ID[1:], // ids are case-sensitive
	}
	for _, id := range hostile {
		if id == started.ID {
			continue
		}
		if _, err := s.Finish(ctx, id); !errdefs.IsNotFound(err) {
			t.Errorf("Finish(%.40q): %v, want NotFound", id, err)
		}
		if _, err := s.Approve(ctx, admin, id); !errdefs.IsNotFound(err) {
			t.Errorf("Approve(%.40q): %v, want NotFound", id, err)
		}
		if _, err := s.Lookup(ctx, id); !errdefs.IsNotFound(err) {
			t.Errorf("Lookup(%.40q): %v, want NotFound", id, err)
		}
	}
	// Well-formed but unknown.
	if _, err := s.Finish(ctx, auth.RandomString(32)); !errdefs.IsNotFound(err) {
		t.Errorf("Finish(unknown): %v", err)
	}
	if _, err := s.Approve(ctx, admin, login.NewApprovalID()); !errdefs.IsNotFound(err) {
		t.Errorf("Approve(unknown): %v", err)
	}
	// Neither id is accepted where the other is expected.
	if _, err := s.Finish(ctx, started.ApprovalID); !errdefs.IsNotFound(err) {
		t.Errorf("Finish(approval id): %v", err)
	}
	if _, err := s.Approve(ctx, admin, started.ID); !errdefs.IsNotFound(err) {
		t.Errorf("Approve(login id): %v", err)
	}
}

func TestIDEntropyAndFormat(t *testing.T) {
	ctx := context.Background()
	s := login.New(newStore(t), login.Config{MaxPendingPerSource: 1000}, quiet)
	// 32 of 62 symbols and 26 of 32 symbols: both well over 128 bits.
	if bits := login.IDLen * math.Log2(62); bits < 128 {
		t.Errorf("login id has %.0f bits", bits)
	}
	if bits := login.ApprovalLen * math.Log2(float64(len(login.ApprovalAlphabet))); bits < 128 {
		t.Errorf("approval id has %.0f bits", bits)
	}
	seen := map[string]bool{}
	symbols := map[rune]int{}
	const n = 300
	for i := 0; i < n; i++ {
		st, err := s.Start(ctx, testPeer)
		if err != nil {
			t.Fatal(err)
		}
		if !login.ValidID(st.ID) || !login.ValidApprovalID(st.ApprovalID) {
			t.Fatalf("malformed ids: %q %q", st.ID, st.ApprovalID)
		}
		if seen[st.ID] || seen[st.ApprovalID] {
			t.Fatalf("id repeated after %d logins", i)
		}
		seen[st.ID], seen[st.ApprovalID] = true, true
		for _, r := range st.ApprovalID {
			symbols[r]++
		}
	}
	// Every letter of the approval alphabet turns up, roughly uniformly
	// (expected n*26/32 ≈ 244 each; a broken generator is far off).
	for _, r := range login.ApprovalAlphabet {
		if c := symbols[r]; c < 150 || c > 350 {
			t.Errorf("approval id letter %q appeared %d times in %d ids", r, c, n)
		}
	}
}

func TestExpiry(t *testing.T) {
	ctx := context.Background()
	clk := &clock{t: time.Now()}
	s := login.New(newStore(t), login.Config{TTL: 10 * time.Minute, Now: clk.Now}, quiet)
	a, _ := s.Start(ctx, testPeer)
	b, _ := s.Start(ctx, testPeer)
	if _, err := s.Approve(ctx, admin, b.ApprovalID); err != nil {
		t.Fatal(err)
	}
	clk.Add(10*time.Minute + time.Second)
	if _, err := s.Approve(ctx, admin, a.ApprovalID); !errors.Is(err, errdefs.ErrExpired) {
		t.Errorf("Approve after expiry: %v, want ErrExpired", err)
	}
	if _, err := s.Finish(ctx, a.ID); !errors.Is(err, errdefs.ErrExpired) {
		t.Errorf("Finish of expired pending login: %v, want ErrExpired", err)
	}
	if _, err := s.Finish(ctx, b.ID); !errors.Is(err, errdefs.ErrExpired) {
		t.Errorf("Finish of an approved login collected too late: %v, want ErrExpired", err)
	}
	if info, _ := s.Lookup(ctx, a.ApprovalID); info.Status != login.StatusExpired {
		t.Errorf("Lookup of expired login: %+v", info)
	}
	// Ended logins are forgotten after Keep; then the id is unknown.
	clk.Add(2 * time.Hour)
	s.Start(ctx, testPeer) // sweeps
	if _, err := s.Finish(ctx, a.ID); !errdefs.IsNotFound(err) {
		t.Errorf("Finish of a forgotten login: %v, want NotFound", err)
	}
}

func TestWaiterEndsAtExpiry(t *testing.T) {
	ctx := context.Background()
	s := login.New(newStore(t), login.Config{TTL: 300 * time.Millisecond, PollInterval: time.Hour}, quiet)
	st, _ := s.Start(ctx, testPeer)
	start := time.Now()
	r := within(t, finishAsync(ctx, s, st.ID), 5*time.Second, "expiring login")
	if !errors.Is(r.err, errdefs.ErrExpired) {
		t.Errorf("Finish: %v, want ErrExpired", r.err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("waiter noticed expiry after %s", took)
	}
}

func TestDeny(t *testing.T) {
	ctx := context.Background()
	s := login.New(newStore(t), login.Config{PollInterval: time.Hour}, quiet)
	st, _ := s.Start(ctx, testPeer)
	waiting := finishAsync(ctx, s, st.ID)
	notYet(t, waiting, "pending login")
	if _, err := s.Deny(ctx, prjToken, st.ApprovalID); !errors.Is(err, errdefs.ErrPermission) {
		t.Errorf("a project token denied a login: %v", err)
	}
	if code, err := s.Deny(ctx, admin, st.ApprovalID); err != nil || code != st.Code {
		t.Fatalf("Deny = %q, %v", code, err)
	}
	if r := within(t, waiting, 5*time.Second, "denied login"); !errors.Is(r.err, errdefs.ErrPermission) {
		t.Errorf("Finish of denied login: %v, want ErrPermission", r.err)
	}
	if _, err := s.Approve(ctx, admin, st.ApprovalID); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("Approve after Deny: %v", err)
	}
}

func TestConcurrentFinishers(t *testing.T) {
	ctx := context.Background()
	s := login.New(newStore(t), login.Config{PollInterval: time.Hour, MaxPerLogin: 4}, quiet)
	st, _ := s.Start(ctx, testPeer)
	var waiting []<-chan result
	for i := 0; i < 4; i++ {
		waiting = append(waiting, finishAsync(ctx, s, st.ID))
	}
	time.Sleep(100 * time.Millisecond)
	// A fifth waiter on the same login is refused, not queued.
	if _, err := s.Finish(ctx, st.ID); !errors.Is(err, errdefs.ErrExhausted) {
		t.Errorf("fifth waiter: %v, want ErrExhausted", err)
	}
	if _, err := s.Approve(ctx, admin, st.ApprovalID); err != nil {
		t.Fatal(err)
	}
	tokens := 0
	for _, w := range waiting {
		r := within(t, w, 5*time.Second, "concurrent finisher")
		switch {
		case r.err == nil && r.token != "":
			tokens++
		case errors.Is(r.err, errdefs.ErrFailedPrecondition):
		default:
			t.Errorf("finisher: %+v", r)
		}
	}
	if tokens != 1 {
		t.Errorf("%d finishers got a token, want exactly 1", tokens)
	}
}

func TestOtherReplicaApproves(t *testing.T) {
	ctx := context.Background()
	st := newStore(t)
	// Two services on one store stand for two control-plane replicas: the
	// waiter on a sees b's approval on its next poll.
	a := login.New(st, login.Config{PollInterval: 50 * time.Millisecond}, quiet)
	b := login.New(st, login.Config{}, quiet)
	started, _ := a.Start(ctx, testPeer)
	waiting := finishAsync(ctx, a, started.ID)
	notYet(t, waiting, "pending login")
	if _, err := b.Approve(ctx, admin, started.ApprovalID); err != nil {
		t.Fatal(err)
	}
	if r := within(t, waiting, 5*time.Second, "approved elsewhere"); r.err != nil || r.token == "" {
		t.Errorf("Finish = %+v", r)
	}
}

func TestLimits(t *testing.T) {
	ctx := context.Background()
	s := login.New(newStore(t), login.Config{MaxPending: 3, MaxWaiters: 2, PollInterval: time.Hour}, quiet)
	var ids []login.Started
	for i := 0; i < 3; i++ {
		st, err := s.Start(ctx, testPeer)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, st)
	}
	if _, err := s.Start(ctx, testPeer); !errors.Is(err, errdefs.ErrExhausted) {
		t.Errorf("Start beyond MaxPending: %v, want ErrExhausted", err)
	}

	wctx, cancel := context.WithCancel(ctx)
	w1, w2 := finishAsync(wctx, s, ids[0].ID), finishAsync(wctx, s, ids[1].ID)
	time.Sleep(100 * time.Millisecond)
	if _, err := s.Finish(ctx, ids[2].ID); !errors.Is(err, errdefs.ErrExhausted) {
		t.Errorf("waiter beyond MaxWaiters: %v, want ErrExhausted", err)
	}
	// A caller going away frees its slot and leaves the login collectable.
	cancel()
	for _, w := range []<-chan result{w1, w2} {
		if r := within(t, w, 5*time.Second, "canceled waiter"); !errors.Is(r.err, context.Canceled) {
			t.Errorf("canceled Finish: %v", r.err)
		}
	}
	left, _ := s.WaitersLeft()
	if left != 0 {
		t.Errorf("%d waiters left after cancel", left)
	}
	if _, err := s.Approve(ctx, admin, ids[0].ApprovalID); err != nil {
		t.Fatal(err)
	}
	if tok, err := s.Finish(ctx, ids[0].ID); err != nil || tok == "" {
		t.Errorf("Finish after a canceled wait: %q, %v", tok, err)
	}
}

func TestCode(t *testing.T) {
	if got := login.Code("abcdefghijkmnpqrstuvwxyz23"); got != "ABCD-EFGH" {
		t.Errorf("Code = %q", got)
	}
	for _, bad := range []string{"", "ABCDEFGHIJKMNPQRSTUVWXYZ23", "abcdefghijkmnpqrstuvwxyz2", "abcdefghijkmnpqrstuvwxyz0o"} {
		if got := login.Code(bad); got != "" {
			t.Errorf("Code(%q) = %q, want empty", bad, got)
		}
	}
}

func TestCloseEndsWaiters(t *testing.T) {
	ctx := context.Background()
	s := login.New(newStore(t), login.Config{PollInterval: time.Hour}, quiet)
	st, _ := s.Start(ctx, testPeer)
	waiting := finishAsync(ctx, s, st.ID)
	notYet(t, waiting, "pending login")
	s.Close()
	s.Close() // idempotent
	if r := within(t, waiting, 5*time.Second, "closed service"); !errors.Is(r.err, errdefs.ErrUnavailable) {
		t.Errorf("Finish after Close: %v, want ErrUnavailable", r.err)
	}
	// The login survives for a restarted server (another Service, same store).
	s2 := login.New(s.Store(), login.Config{}, quiet)
	if _, err := s2.Approve(ctx, admin, st.ApprovalID); err != nil {
		t.Fatal(err)
	}
	if tok, err := s2.Finish(ctx, st.ID); err != nil || tok == "" {
		t.Errorf("Finish on the restarted service: %q, %v", tok, err)
	}
}

const testPeer = "192.0.2.1:40000"

// An attacker at one address takes every login slot it can: it gets its
// share (MaxPendingPerSource) and a clear ResourceExhausted after, while
// callers at other addresses still start logins; an approved or denied
// login frees its slot, and so does expiry.
func TestPendingLoginsPerSource(t *testing.T) {
	ctx := context.Background()
	clk := &clock{t: time.Now()}
	s := login.New(newStore(t), login.Config{MaxPendingPerSource: 3, Now: clk.Now, PollInterval: time.Hour}, quiet)
	var mine []login.Started
	for i := range 3 {
		st, err := s.Start(ctx, fmt.Sprintf("203.0.113.7:%d", 1000+i))
		if err != nil {
			t.Fatal(err)
		}
		mine = append(mine, st)
	}
	_, err := s.Start(ctx, "203.0.113.7:2000")
	if !errors.Is(err, errdefs.ErrExhausted) || !strings.Contains(err.Error(), "from your address") {
		t.Errorf("Start beyond the address's share: %v; want ErrExhausted naming the address's share", err)
	}
	// The same host over IPv4-mapped IPv6 is the same source.
	if _, err := s.Start(ctx, "[::ffff:203.0.113.7]:2001"); !errors.Is(err, errdefs.ErrExhausted) {
		t.Errorf("the attacker as an IPv4-mapped address: %v", err)
	}
	// Other addresses are untouched.
	for _, peer := range []string{"203.0.113.8:1", "127.0.0.1:5", "[2001:db8:1:2::1]:7"} {
		if _, err := s.Start(ctx, peer); err != nil {
			t.Errorf("Start from %s while 203.0.113.7 is full: %v", peer, err)
		}
	}
	// An IPv6 attacker counts by /64: rotating addresses in it gains nothing.
	for i := range 2 {
		if _, err := s.Start(ctx, fmt.Sprintf("[2001:db8:1:2::%x]:1", 100+i)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Start(ctx, "[2001:db8:1:2:ffff::9]:1"); !errors.Is(err, errdefs.ErrExhausted) {
		t.Errorf("a fourth login from one /64: %v, want ErrExhausted", err)
	}
	if _, err := s.Start(ctx, "[2001:db8:1:3::1]:1"); err != nil {
		t.Errorf("another /64: %v", err)
	}
	// A decided login frees its slot.
	if _, err := s.Deny(ctx, admin, mine[0].ApprovalID); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Start(ctx, "203.0.113.7:3000"); err != nil {
		t.Errorf("Start after one login was denied: %v", err)
	}
	// Concurrent starts cannot all slip through the count.
	var wg sync.WaitGroup
	var ok atomic.Int32
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := s.Start(ctx, fmt.Sprintf("198.51.100.1:%d", i)); err == nil {
				ok.Add(1)
			}
		}()
	}
	wg.Wait()
	if ok.Load() != 3 {
		t.Errorf("%d of 20 concurrent starts from one address succeeded, want 3", ok.Load())
	}
	// Expiry frees the rest.
	clk.Add(11 * time.Minute)
	if _, err := s.Start(ctx, "203.0.113.7:4000"); err != nil {
		t.Errorf("Start after the address's logins expired: %v", err)
	}
}

func TestSource(t *testing.T) {
	for in, want := range map[string]string{
		"203.0.113.7:1234":            "203.0.113.7",
		"203.0.113.7":                 "203.0.113.7",
		"[::ffff:10.1.2.3]:9":         "10.1.2.3",
		"[2001:db8:a:b:c:d:e:f]:1":    "2001:db8:a:b::/64",
		"[fe80::1%eth0]:1":            "fe80::/64",
		"":                            "unknown",
		"not an address":              "unknown",
		"[2001:db8::1]:notaport:more": "unknown",
	} {
		if got := login.Source(in); got != want {
			t.Errorf("Source(%q) = %q, want %q", in, got, want)
		}
	}
}
