package store_test

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/store"
	"github.com/kiln-dev/kiln/internal/store/storetest"
)

// The store behaves the same with an observer (the whole conformance
// suite passes through the timed connections), and the observer hears of
// queries, execs and transactions.
func TestSQLiteObserved(t *testing.T) {
	var mu sync.Mutex
	ops := map[string]int{}
	observe := func(op string, d time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		if d < 0 {
			t.Errorf("%s took %v", op, d)
		}
		ops[op]++
	}
	storetest.Run(t, func(t *testing.T) store.Store {
		s, err := store.OpenSQLite(context.Background(), filepath.Join(t.TempDir(), "kiln.db"), store.WithObserver(observe))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
	mu.Lock()
	defer mu.Unlock()
	for _, op := range []string{store.OpQuery, store.OpExec, store.OpTx} {
		if ops[op] == 0 {
			t.Errorf("no %s observed (%v)", op, ops)
		}
	}
	for op := range ops {
		if op != store.OpQuery && op != store.OpExec && op != store.OpTx {
			t.Errorf("unexpected op %q", op)
		}
	}
}
