package web

import (
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/auth"
)

// One token signing in over and over ends only its own oldest sessions,
// never another token's.
func TestOneTokenCanNotPushOthersOut(t *testing.T) {
	now := time.Now()
	ss := newSessions(func() time.Time { now = now.Add(time.Millisecond); return now }, nil)
	other, _ := ss.create("secret-a", auth.Principal{TokenID: "tok_a"}, false)
	var first string
	for i := range maxSessions + 5 {
		id, _ := ss.create("secret-b", auth.Principal{TokenID: "tok_b"}, false)
		if i == 0 {
			first = id
		}
	}
	if _, ok := ss.get(other); !ok {
		t.Error("another token's session was pushed out")
	}
	if _, ok := ss.get(first); ok {
		t.Error("the looping token's oldest session lives")
	}
	if n := len(ss.m); n != maxTokenSessions+1 {
		t.Errorf("%d sessions, want %d", n, maxTokenSessions+1)
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
	now := time.Now()
	var told []string
	ss := newSessions(func() time.Time { return now }, func(s *session) { told = append(told, s.principal.TokenID) })
	ss.create("s1", auth.Principal{TokenID: "tok_minted_expires"}, true)
	ss.create("s2", auth.Principal{TokenID: "tok_pasted"}, false)
	now = now.Add(sessionIdle + time.Minute)
	ss.get("nothing") // sweeps
	if len(told) != 1 || told[0] != "tok_minted_expires" {
		t.Fatalf("after expiry told %v", told)
	}
	told = nil
	var ids []string
	for range maxTokenSessions + 1 {
		now = now.Add(time.Second)
		id, _ := ss.create("s3", auth.Principal{TokenID: "tok_minted_evicted"}, true)
		ids = append(ids, id)
	}
	if len(told) != 1 || told[0] != "tok_minted_evicted" {
		t.Fatalf("after eviction told %v", told)
	}
	ss.end(ids[len(ids)-1]) // replaced by a new sign-in
	if len(told) != 2 {
		t.Fatalf("after end told %v", told)
	}
	if s := ss.take(ids[len(ids)-2]); s == nil || len(told) != 2 {
		t.Fatalf("take told %v", told)
	}
}
