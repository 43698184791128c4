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
	ss := newSessions(func() time.Time { now = now.Add(time.Millisecond); return now })
	other, _ := ss.create("secret-a", auth.Principal{TokenID: "tok_a"})
	var first string
	for i := range maxSessions + 5 {
		id, _ := ss.create("secret-b", auth.Principal{TokenID: "tok_b"})
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
