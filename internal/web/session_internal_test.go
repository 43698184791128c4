package web

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/project"
	"github.com/kiln-dev/kiln/internal/store"
)

// sessionStore is a SQLite store with organization o1 and its tokens ids.
func sessionStore(t *testing.T, ids ...string) *store.SQLite {
	t.Helper()
	ctx := context.Background()
	st, err := store.OpenSQLite(ctx, filepath.Join(t.TempDir(), "kiln.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if err := st.CreateOrganization(ctx, project.Organization{ID: "o1", Name: "o1", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		_, hash := auth.NewSecret(auth.TokenOrg)
		if err := st.CreateToken(ctx, auth.Token{ID: id, Kind: auth.TokenOrg, OrgID: "o1", SecretHash: hash, CreatedAt: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	return st
}

func org(id string) auth.Principal {
	return auth.Principal{TokenID: id, Kind: auth.TokenOrg, OrgID: "o1"}
}

// One token signing in over and over ends only its own oldest sessions,
// never another token's.
func TestOneTokenCanNotPushOthersOut(t *testing.T) {
	ctx := context.Background()
	now := time.Now()
	ss := newSessions(sessionStore(t, "tok_a", "tok_b"), func() time.Time { now = now.Add(time.Minute + time.Second); return now }, nil)
	other, _, err := ss.create(ctx, org("tok_a"), false)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for range maxTokenSessions + 5 {
		id, _, err := ss.create(ctx, org("tok_b"), false)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if _, ok, err := ss.get(ctx, other); !ok || err != nil {
		t.Errorf("another token's session was pushed out: %v", err)
	}
	for i, id := range ids {
		_, ok, err := ss.get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if want := i >= 5; ok != want {
			t.Errorf("session %d of the looping token: live %v, want %v", i, ok, want)
		}
	}
}

func TestLimiter(t *testing.T) {
	now := time.Now()
	l := newLimiter(1, 3, func() time.Time { return now })
	for i := range 3 {
		if ok, _ := l.allow("a"); !ok {
			t.Fatalf("request %d refused within the burst", i)
		}
	}
	if ok, wait := l.allow("a"); ok || wait <= 0 || wait > time.Second {
		t.Errorf("past the burst: %v, wait %v", ok, wait)
	}
	if ok, _ := l.allow("b"); !ok {
		t.Error("another key was refused")
	}
	now = now.Add(time.Second)
	if ok, _ := l.allow("a"); !ok {
		t.Error("refused after the bucket refilled")
	}
}

// A device login's session that ends without signing out (expired,
// evicted, replaced) is told of, so its minted token is deleted; a pasted
// token's is not.
func TestMintedSessionsEndingAreTold(t *testing.T) {
	ctx := context.Background()
	now := time.Now()
	var mu sync.Mutex
	var told []string
	ss := newSessions(sessionStore(t, "tok_minted_expires", "tok_pasted", "tok_minted_evicted"), func() time.Time { return now },
		func(id string) { mu.Lock(); told = append(told, id); mu.Unlock() })
	ss.create(ctx, org("tok_minted_expires"), true)
	ss.create(ctx, org("tok_pasted"), false)
	now = now.Add(sessionIdle + time.Minute)
	ss.get(ctx, "nothing") // sweeps
	if len(told) != 1 || told[0] != "tok_minted_expires" {
		t.Fatalf("after expiry told %v", told)
	}
	told = nil
	var ids []string
	for range maxTokenSessions + 1 {
		now = now.Add(time.Second)
		id, _, err := ss.create(ctx, org("tok_minted_evicted"), true)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if len(told) != 1 || told[0] != "tok_minted_evicted" {
		t.Fatalf("after eviction told %v", told)
	}
	ss.end(ctx, ids[len(ids)-1]) // replaced by a new sign-in
	if len(told) != 2 {
		t.Fatalf("after end told %v", told)
	}
	if err := ss.take(ctx, ids[len(ids)-2]); err != nil || len(told) != 2 {
		t.Fatalf("take told %v (%v)", told, err)
	}
}

// Two dashboards (replicas) on one store: a session made on one is live
// on the other, and ends everywhere once its token is deleted.
func TestSessionsAcrossReplicas(t *testing.T) {
	ctx := context.Background()
	st := sessionStore(t, "tok_a")
	a := newSessions(st, time.Now, nil)
	b := newSessions(st, time.Now, nil)
	id, made, err := a.create(ctx, org("tok_a"), false)
	if err != nil {
		t.Fatal(err)
	}
	s, ok, err := b.get(ctx, id)
	if err != nil || !ok || s.csrf != made.csrf || s.principal.TokenID != "tok_a" || s.principal.OrgID != "o1" {
		t.Fatalf("on the other replica: %+v %v %v", s, ok, err)
	}
	if err := st.DeleteToken(ctx, "tok_a"); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := b.get(ctx, id); ok || err != nil {
		t.Fatalf("the deleted token's session lives: %v", err)
	}
	if _, err := st.GetWebSession(ctx, sessionKey(id)); err == nil {
		t.Fatal("the deleted token's session was kept")
	}
}

// A pending device login is kept sealed: the store's record alone does
// not give the login's id, and another cookie does not open it.
func TestPendingLoginsAreSealed(t *testing.T) {
	ctx := context.Background()
	st := sessionStore(t)
	pl := &pendingLogins{st: st}
	exp := time.Now().Add(time.Minute).UTC().Truncate(time.Millisecond)
	id, err := pl.put(ctx, pendingLogin{id: "the-login-secret", approval: "ap", code: "ABCD", expires: exp})
	if err != nil {
		t.Fatal(err)
	}
	rec, err := st.GetWebLogin(ctx, sessionKey(id))
	if err != nil || rec.LoginSealed == "" || rec.LoginSealed == "the-login-secret" {
		t.Fatalf("stored %+v, %v", rec, err)
	}
	got, ok, err := (&pendingLogins{st: st}).get(ctx, id, time.Now()) // another replica
	if err != nil || !ok || got.id != "the-login-secret" || got.code != "ABCD" || !got.expires.Equal(exp) {
		t.Fatalf("get = %+v %v %v", got, ok, err)
	}
	if _, ok, _ := pl.get(ctx, id, exp.Add(time.Second)); ok {
		t.Error("an expired login was found")
	}
	if _, err := openLogin("another cookie", rec.LoginSealed); err == nil {
		t.Error("another cookie opened the login")
	}
	if err := pl.end(ctx, id); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := pl.get(ctx, id, time.Now()); ok {
		t.Error("an ended login was found")
	}
}
