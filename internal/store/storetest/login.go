package storetest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/login"
	"github.com/kiln-dev/kiln/internal/store"
)

func logins(t *testing.T, s store.Store) {
	ctx := context.Background()
	l := login.Login{IDHash: "h1", ApprovalID: "a1", Status: login.StatusPending, CreatedAt: now, ExpiresAt: now.Add(10 * time.Minute)}
	if err := s.CreateLogin(ctx, l); err != nil {
		t.Fatal(err)
	}
	for _, dup := range []login.Login{
		{IDHash: "h1", ApprovalID: "a2", Status: login.StatusPending, CreatedAt: now, ExpiresAt: now},
		{IDHash: "h2", ApprovalID: "a1", Status: login.StatusPending, CreatedAt: now, ExpiresAt: now},
	} {
		if err := s.CreateLogin(ctx, dup); !errors.Is(err, errdefs.ErrAlreadyExists) {
			t.Errorf("CreateLogin(%+v) over an existing id: %v, want ErrAlreadyExists", dup, err)
		}
	}
	got, err := s.GetLogin(ctx, "h1")
	if err != nil || got != l {
		t.Errorf("GetLogin = %+v, %v; want %+v", got, err, l)
	}
	if got, err := s.GetLoginByApproval(ctx, "a1"); err != nil || got.IDHash != "h1" {
		t.Errorf("GetLoginByApproval = %+v, %v", got, err)
	}
	if _, err := s.GetLogin(ctx, "nope"); !errdefs.IsNotFound(err) {
		t.Errorf("GetLogin(unknown): %v", err)
	}
	if _, err := s.GetLoginByApproval(ctx, "nope"); !errdefs.IsNotFound(err) {
		t.Errorf("GetLoginByApproval(unknown): %v", err)
	}
	if _, err := s.UpdateLogin(ctx, "nope", func(*login.Login) error { return nil }); !errdefs.IsNotFound(err) {
		t.Errorf("UpdateLogin(unknown): %v", err)
	}

	// fn's error writes nothing.
	boom := errors.New("boom")
	if _, err := s.UpdateLogin(ctx, "h1", func(l *login.Login) error { l.Status = login.StatusDenied; return boom }); !errors.Is(err, boom) {
		t.Errorf("UpdateLogin returned %v, want fn's error", err)
	}
	if got, _ := s.GetLogin(ctx, "h1"); got.Status != login.StatusPending {
		t.Errorf("a failed update was written: %+v", got)
	}

	// Racing updates are serialised: exactly one sees pending.
	var wins atomic.Int32
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := s.UpdateLogin(ctx, "h1", func(l *login.Login) error {
				if l.Status != login.StatusPending {
					return fmt.Errorf("not pending: %w", errdefs.ErrFailedPrecondition)
				}
				l.Status, l.OrgID, l.ApprovedBy, l.TokenID, l.UpdatedAt = login.StatusApproved, "o1", "t1", "tok1", now.Add(time.Minute)
				return nil
			})
			if err == nil {
				wins.Add(1)
			} else if !errors.Is(err, errdefs.ErrFailedPrecondition) {
				t.Errorf("racing UpdateLogin: %v", err)
			}
		}()
	}
	wg.Wait()
	if wins.Load() != 1 {
		t.Errorf("%d racing updates saw pending, want exactly 1", wins.Load())
	}
	got, _ = s.GetLogin(ctx, "h1")
	if got.Status != login.StatusApproved || got.OrgID != "o1" || got.ApprovedBy != "t1" || got.TokenID != "tok1" || !got.UpdatedAt.Equal(now.Add(time.Minute)) {
		t.Errorf("after approval: %+v", got)
	}

	// Expired logins are counted out and deleted; live ones stay.
	if err := s.CreateLogin(ctx, login.Login{IDHash: "h2", ApprovalID: "a2", Status: login.StatusPending, CreatedAt: now, ExpiresAt: now.Add(time.Minute)}); err != nil {
		t.Fatal(err)
	}
	if n, err := s.CountLogins(ctx, now); err != nil || n != 2 {
		t.Errorf("CountLogins(now) = %d, %v; want 2", n, err)
	}
	if n, err := s.CountLogins(ctx, now.Add(2*time.Minute)); err != nil || n != 1 {
		t.Errorf("CountLogins(now+2m) = %d, %v; want 1", n, err)
	}
	// Pending logins are counted by source.
	for i, src := range []string{"10.0.0.1", "10.0.0.1", "10.0.0.2"} {
		l := login.Login{IDHash: fmt.Sprintf("s%d", i), ApprovalID: fmt.Sprintf("sa%d", i), Status: login.StatusPending, Source: src,
			CreatedAt: now, ExpiresAt: now.Add(time.Minute)}
		if err := s.CreateLogin(ctx, l); err != nil {
			t.Fatal(err)
		}
	}
	if got, _ := s.GetLogin(ctx, "s2"); got.Source != "10.0.0.2" {
		t.Errorf("source not kept: %+v", got)
	}
	if _, err := s.UpdateLogin(ctx, "s1", func(l *login.Login) error { l.Status = login.StatusDenied; return nil }); err != nil {
		t.Fatal(err)
	}
	for src, want := range map[string]int{"10.0.0.1": 1, "10.0.0.2": 1, "10.0.0.3": 0} {
		if n, err := s.CountPendingLogins(ctx, src, now); err != nil || n != want {
			t.Errorf("CountPendingLogins(%s) = %d, %v; want %d", src, n, err, want)
		}
	}
	if n, _ := s.CountPendingLogins(ctx, "10.0.0.1", now.Add(2*time.Minute)); n != 0 {
		t.Errorf("expired logins counted as pending: %d", n)
	}
	for _, h := range []string{"s0", "s1", "s2"} {
		s.UpdateLogin(ctx, h, func(l *login.Login) error { l.ExpiresAt = now.Add(time.Second); return nil })
	}

	if n, err := s.DeleteLogins(ctx, now.Add(2*time.Minute)); err != nil || n != 4 {
		t.Errorf("DeleteLogins = %d, %v; want 4", n, err)
	}
	if _, err := s.GetLogin(ctx, "h2"); !errdefs.IsNotFound(err) {
		t.Errorf("expired login survived DeleteLogins: %v", err)
	}
	if _, err := s.GetLogin(ctx, "h1"); err != nil {
		t.Errorf("live login deleted: %v", err)
	}
}
