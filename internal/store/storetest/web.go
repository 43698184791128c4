package storetest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/store"
)

// webSessions: the dashboard's sessions are found by their hash, capped
// per token (the least recently seen end), touched, deleted once, and
// expired once each however many sweep at a time; pending device logins
// are kept until deleted or expired.
func webSessions(t *testing.T, s store.Store) {
	ctx := context.Background()
	seed(t, s, "o1", "p1")
	if err := s.CreateToken(ctx, auth.Token{ID: "tok_a", Kind: auth.TokenOrg, OrgID: "o1", SecretHash: "ha", CreatedAt: now}); err != nil {
		t.Fatal(err)
	}
	mk := func(i int, tok string, minted bool) store.WebSession {
		return store.WebSession{IDHash: fmt.Sprintf("h%02d", i), TokenID: tok, CSRF: fmt.Sprintf("c%d", i), Minted: minted,
			CreatedAt: now, SeenAt: now.Add(time.Duration(i) * time.Second)}
	}
	for i := range 3 {
		ended, err := s.CreateWebSession(ctx, mk(i, "tok_a", i == 0), 3)
		if err != nil || len(ended) != 0 {
			t.Fatalf("create %d: ended %v, %v", i, ended, err)
		}
	}
	if _, err := s.CreateWebSession(ctx, mk(9, "tok_other", false), 3); err != nil {
		t.Fatal(err)
	}
	got, err := s.GetWebSession(ctx, "h00")
	if err != nil || got != mk(0, "tok_a", true) {
		t.Fatalf("get = %+v, %v", got, err)
	}
	if _, err := s.GetWebSession(ctx, "nope"); !errdefs.IsNotFound(err) {
		t.Fatalf("get unknown: %v", err)
	}
	// h00 is used again: h01 is now the least recently seen of tok_a's.
	if err := s.TouchWebSession(ctx, "h00", now.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.GetWebSession(ctx, "h00"); !got.SeenAt.Equal(now.Add(time.Minute)) {
		t.Fatalf("touched seen = %v", got.SeenAt)
	}
	if err := s.TouchWebSession(ctx, "h00", now); err != nil { // never back in time
		t.Fatal(err)
	}
	if got, _ := s.GetWebSession(ctx, "h00"); !got.SeenAt.Equal(now.Add(time.Minute)) {
		t.Fatalf("touched back: seen = %v", got.SeenAt)
	}
	ended, err := s.CreateWebSession(ctx, mk(3, "tok_a", false), 3)
	if err != nil || len(ended) != 1 || ended[0].IDHash != "h01" {
		t.Fatalf("create beyond the cap: ended %+v, %v", ended, err)
	}
	if _, err := s.GetWebSession(ctx, "h09"); err != nil {
		t.Fatalf("another token's session ended: %v", err)
	}
	if _, err := s.CreateWebSession(ctx, mk(3, "tok_a", false), 0); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Fatalf("a taken id: %v", err)
	}

	ws, err := s.DeleteWebSession(ctx, "h03")
	if err != nil || ws.IDHash != "h03" {
		t.Fatalf("delete = %+v, %v", ws, err)
	}
	if _, err := s.DeleteWebSession(ctx, "h03"); !errdefs.IsNotFound(err) {
		t.Fatalf("delete again: %v", err)
	}

	// Left: h00 (seen now+1m), h02 (now+2s), h09 (now+9s). Expire those
	// seen before now+5s, or created before the epoch: h02, by one of
	// the racing sweepers only.
	var mu sync.Mutex
	var all []store.WebSession
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, err := s.ExpireWebSessions(ctx, now.Add(5*time.Second), time.UnixMilli(1), 100)
			if err != nil {
				t.Error(err)
			}
			mu.Lock()
			all = append(all, got...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	if len(all) != 1 || all[0].IDHash != "h02" {
		t.Fatalf("expired %+v, want h02 once", all)
	}
	got2, err := s.ExpireWebSessions(ctx, time.UnixMilli(1), now.Add(time.Second), 100) // by age
	if err != nil || len(got2) != 2 {
		t.Fatalf("expired by age %+v, %v", got2, err)
	}

	l := store.WebLogin{IDHash: "lh", LoginSealed: "sealed", ApprovalID: "ap", Code: "ABCD-EFGH", ExpiresAt: time.Now().Add(time.Minute).UTC().Truncate(time.Millisecond)}
	if err := s.PutWebLogin(ctx, l); err != nil {
		t.Fatal(err)
	}
	if got, err := s.GetWebLogin(ctx, "lh"); err != nil || got != l {
		t.Fatalf("login = %+v, %v", got, err)
	}
	old := store.WebLogin{IDHash: "old", LoginSealed: "x", ApprovalID: "ap2", Code: "c", ExpiresAt: time.Now().Add(-time.Minute)}
	if err := s.PutWebLogin(ctx, old); err != nil {
		t.Fatal(err)
	}
	if err := s.PutWebLogin(ctx, store.WebLogin{IDHash: "new", LoginSealed: "y", ApprovalID: "ap3", Code: "c", ExpiresAt: time.Now().Add(time.Minute)}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetWebLogin(ctx, "old"); !errdefs.IsNotFound(err) {
		t.Fatalf("an expired login was kept: %v", err)
	}
	if err := s.DeleteWebLogin(ctx, "lh"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetWebLogin(ctx, "lh"); !errdefs.IsNotFound(err) {
		t.Fatalf("a deleted login: %v", err)
	}
}
