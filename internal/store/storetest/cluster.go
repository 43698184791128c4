package storetest

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/build"
	"github.com/kiln-dev/kiln/internal/cluster"
	"github.com/kiln-dev/kiln/internal/store"
)

// replicas: a heartbeat adds or refreshes a replica; a build records the
// replica holding it.
func replicas(t *testing.T, s store.Store) {
	ctx := context.Background()
	r1 := cluster.Replica{ID: "r1", APIURL: "http://10.0.0.1:8080", GatewayAddr: "10.0.0.1:8443", StartedAt: now}
	if err := s.Heartbeat(ctx, r1); err != nil {
		t.Fatal(err)
	}
	r1.GatewayAddr = "10.0.0.1:9443"
	if err := s.Heartbeat(ctx, r1); err != nil {
		t.Fatal(err)
	}
	if err := s.Heartbeat(ctx, cluster.Replica{ID: "r2", APIURL: "http://10.0.0.2:8080", GatewayAddr: "10.0.0.2:8443", StartedAt: now}); err != nil {
		t.Fatal(err)
	}
	rs, err := s.ListReplicas(ctx)
	if err != nil || len(rs) != 2 || rs[0].ID != "r1" || rs[0].GatewayAddr != "10.0.0.1:9443" || !rs[0].StartedAt.Equal(now) ||
		time.Since(rs[0].HeartbeatAt) > time.Minute {
		t.Fatalf("replicas = %+v, %v", rs, err)
	}
	// A reaper forgets a replica only while it is still silent.
	if err := s.RemoveReplica(ctx, "r1", time.Hour); err != nil {
		t.Fatal(err)
	}
	if rs, _ := s.ListReplicas(ctx); len(rs) != 2 || rs[0].Age > time.Minute || rs[0].Age < -time.Minute {
		t.Fatalf("a fresh replica was removed as stale, or its age is off: %+v", rs)
	}
	if err := s.RemoveReplica(ctx, "r1", 0); err != nil {
		t.Fatal(err)
	}
	if rs, _ := s.ListReplicas(ctx); len(rs) != 1 || rs[0].ID != "r2" {
		t.Fatalf("after remove: %+v", rs)
	}

	seed(t, s, "o1", "p1")
	b := build.Build{ID: "b1", ProjectID: "p1", OrgID: "o1", Status: build.Running, CreatedAt: now}
	if err := s.CreateBuild(ctx, b); err != nil {
		t.Fatal(err)
	}
	if _, err := s.UpdateBuild(ctx, "b1", func(b *build.Build) error { b.Replica = "r2"; return nil }); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.GetBuild(ctx, "b1"); got.Replica != "r2" {
		t.Fatalf("replica = %q", got.Replica)
	}
}

// builderPlacement: the first replica to ask places a builder; others get
// it while it beats; once it stops, the next asker takes it over. Of many
// concurrent first askers, all agree.
func builderPlacement(t *testing.T, s store.Store) {
	ctx := context.Background()
	seed(t, s, "o1", "p1", "p2")
	for _, id := range []string{"r1", "r2"} {
		if err := s.Heartbeat(ctx, cluster.Replica{ID: id, StartedAt: now}); err != nil {
			t.Fatal(err)
		}
	}
	alive := time.Minute // beat less than a minute ago: alive
	if got, err := s.PlaceBuilder(ctx, "p1", "linux/amd64", "r1", alive); err != nil || got != "r1" {
		t.Fatalf("first place = %q, %v", got, err)
	}
	if got, err := s.PlaceBuilder(ctx, "p1", "linux/amd64", "r2", alive); err != nil || got != "r1" {
		t.Fatalf("r2 asking = %q, %v; want r1's", got, err)
	}
	if got, err := s.PlaceBuilder(ctx, "p1", "linux/arm64", "r2", alive); err != nil || got != "r2" {
		t.Fatalf("another platform = %q, %v", got, err)
	}
	// r1 beat longer ago than a (tiny) timeout: dead; r2 takes its builder.
	if got, err := s.PlaceBuilder(ctx, "p1", "linux/amd64", "r2", time.Nanosecond); err != nil || got != "r2" {
		t.Fatalf("after r1 died = %q, %v; want r2", got, err)
	}
	// A replica that is not listed at all is dead too.
	if err := s.RemoveReplica(ctx, "r2", 0); err != nil {
		t.Fatal(err)
	}
	if got, err := s.PlaceBuilder(ctx, "p1", "linux/amd64", "r1", alive); err != nil || got != "r1" {
		t.Fatalf("after r2 was removed = %q, %v; want r1", got, err)
	}

	if err := s.Heartbeat(ctx, cluster.Replica{ID: "r2", StartedAt: now}); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	got := make([]string, 8)
	for i := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			if got[i], err = s.PlaceBuilder(ctx, "p2", "linux/amd64", []string{"r1", "r2"}[i%2], alive); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	for _, g := range got {
		if g != got[0] {
			t.Fatalf("concurrent first placements disagree: %v", got)
		}
	}

	if err := s.DeleteProject(ctx, "p1"); err != nil {
		t.Fatal(err)
	}
	if got, err := s.PlaceBuilder(ctx, "p1", "linux/amd64", "r9", alive); err != nil || got != "r9" {
		t.Fatalf("placement outlived its project: %q, %v", got, err)
	}
}

// secretsAndLocks: the first stored secret wins; a lock has one holder.
func secretsAndLocks(t *testing.T, s store.Store) {
	ctx := context.Background()
	if v, err := s.PutSecretIfAbsent(ctx, "ca", "first"); err != nil || v != "first" {
		t.Fatalf("first put = %q, %v", v, err)
	}
	if v, err := s.PutSecretIfAbsent(ctx, "ca", "second"); err != nil || v != "first" {
		t.Fatalf("second put = %q, %v; want the first's", v, err)
	}
	held, unlock, ok, err := s.TryLock(ctx, "gc")
	if err != nil || !ok {
		t.Fatalf("first lock: %v %v", ok, err)
	}
	if _, _, ok, err := s.TryLock(ctx, "gc"); err != nil || ok {
		t.Fatalf("second holder of one lock: %v %v", ok, err)
	}
	_, u2, ok, err := s.TryLock(ctx, "sweep")
	if err != nil || !ok {
		t.Fatalf("another lock: %v %v", ok, err)
	}
	u2()
	if held.Err() != nil {
		t.Fatalf("a held lock's context is done: %v", context.Cause(held))
	}
	unlock()
	unlock() // twice: nothing more
	if held.Err() == nil {
		t.Fatal("an unlocked lock's context is not done")
	}
	_, u3, ok, err := s.TryLock(ctx, "gc")
	if err != nil || !ok {
		t.Fatalf("lock after unlock: %v %v", ok, err)
	}
	u3()
}
