package storetest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/build"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/project"
	"github.com/kiln-dev/kiln/internal/store"
)

// customerProjects: concurrent first uses of a customer id make exactly one
// project, and customer ids are per organization.
func customerProjects(t *testing.T, s store.Store) {
	ctx := context.Background()
	seed(t, s, "o1")
	seed(t, s, "o2")
	const racers = 8
	var wg sync.WaitGroup
	got := make([]project.Project, racers)
	created := make([]bool, racers)
	errs := make([]error, racers)
	for i := range racers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := project.Project{ID: fmt.Sprintf("cp%d", i), OrgID: "o1", Name: "acme", CustomerID: "acme", CreatedAt: now}
			got[i], created[i], errs[i] = s.GetOrCreateCustomerProject(ctx, p)
		}()
	}
	wg.Wait()
	n := 0
	for i := range racers {
		if errs[i] != nil {
			t.Fatalf("racer %d: %v", i, errs[i])
		}
		if got[i].ID != got[0].ID || got[i].CustomerID != "acme" {
			t.Errorf("racer %d got project %q (customer %q), racer 0 got %q", i, got[i].ID, got[i].CustomerID, got[0].ID)
		}
		if created[i] {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d racers say they created the project, want 1", n)
	}
	ps, _ := s.ListProjects(ctx, "o1")
	if len(ps) != 1 {
		t.Errorf("organization has %d projects after the race, want 1", len(ps))
	}
	// The same customer id in another organization is another project.
	other, made, err := s.GetOrCreateCustomerProject(ctx, project.Project{ID: "x", OrgID: "o2", Name: "acme", CustomerID: "acme", CreatedAt: now})
	if err != nil || !made || other.ID != "x" {
		t.Errorf("customer in another org: %+v created=%v err=%v", other, made, err)
	}
	if _, _, err := s.GetOrCreateCustomerProject(ctx, project.Project{ID: "y", OrgID: "o1"}); !errdefs.IsInvalid(err) {
		t.Errorf("no customer id: err = %v, want invalid", err)
	}
	// Plain projects carry no customer and never collide.
	seed(t, s, "o1", "plain1", "plain2")
	if p, _ := s.GetProject(ctx, "plain1"); p.CustomerID != "" {
		t.Errorf("plain project has customer %q", p.CustomerID)
	}
}

// sourceBuilds: the fields of a source build round-trip, and status
// filters see queued and pushing builds.
func sourceBuilds(t *testing.T, s store.Store) {
	ctx := context.Background()
	seed(t, s, "o1", "p1")
	b := build.Build{ID: "s1", ProjectID: "p1", OrgID: "o1", Status: build.Queued, Kind: build.KindSource,
		Spec: `{"context_key":"k"}`, Secrets: "sealed", CreatedAt: now}
	if err := s.CreateBuild(ctx, b); err != nil {
		t.Fatal(err)
	}
	s.CreateBuild(ctx, build.Build{ID: "c1", ProjectID: "p1", OrgID: "o1", Status: build.Running, CreatedAt: now})
	if c, _ := s.GetBuild(ctx, "c1"); c.Kind != build.KindClient || c.IsSource() {
		t.Errorf("a build created without a kind reads as %q", c.Kind)
	}
	got, err := s.GetBuild(ctx, "s1")
	if err != nil || got.Kind != build.KindSource || got.Spec != b.Spec || got.Secrets != "sealed" || got.Terminal() {
		t.Fatalf("source build = %+v, %v", got, err)
	}
	queued, _ := s.ListBuildsByStatus(ctx, build.Queued)
	if len(queued) != 1 || queued[0].ID != "s1" {
		t.Errorf("queued builds = %v", queued)
	}
	refs := []string{"127.0.0.1:1/p1:s1", "127.0.0.1:1/p1:v1"}
	_, err = s.UpdateBuild(ctx, "s1", func(b *build.Build) error {
		b.Status, b.Secrets, b.ImageRefs, b.ImageDigest = build.Succeeded, "", refs, "sha256:abc"
		b.GitCommit = "0123456789abcdef0123456789abcdef01234567"
		b.FinishedAt = now.Add(time.Minute)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	got, _ = s.GetBuild(ctx, "s1")
	if !got.Terminal() || got.Secrets != "" || !slices.Equal(got.ImageRefs, refs) || got.ImageDigest != "sha256:abc" || got.Spec != b.Spec ||
		got.GitCommit != "0123456789abcdef0123456789abcdef01234567" {
		t.Errorf("after finish: %+v", got)
	}
	for _, st := range []build.Status{build.Queued, build.Running, build.Pushing} {
		if (build.Build{Status: st}).Terminal() {
			t.Errorf("%s reads as terminal", st)
		}
	}
}

// buildLogs: one build's lines across steps come back in stored order
// with their sequence numbers, paged; other builds' lines never.
func buildLogs(t *testing.T, s store.Store) {
	ctx := context.Background()
	seed(t, s, "o1", "p1")
	s.CreateBuild(ctx, build.Build{ID: "b1", ProjectID: "p1", OrgID: "o1", Status: build.Running, CreatedAt: now})
	s.CreateBuild(ctx, build.Build{ID: "b2", ProjectID: "p1", OrgID: "o1", Status: build.Running, CreatedAt: now})
	s.AppendLogs(ctx, "b1", []build.LogLine{{Digest: "d1", At: now, Message: "one"}, {Digest: "d2", At: now, Message: "two"}})
	s.AppendLogs(ctx, "b2", []build.LogLine{{Digest: "d1", At: now, Message: "other build"}})
	s.AppendLogs(ctx, "b1", []build.LogLine{{Digest: "d1", At: now, Message: "three"}})
	all, err := s.ListBuildLogs(ctx, "b1", 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	var msgs []string
	for i, l := range all {
		msgs = append(msgs, l.Digest+":"+l.Message)
		if l.Seq != i+1 {
			t.Errorf("line %d has seq %d", i, l.Seq)
		}
	}
	if want := []string{"d1:one", "d2:two", "d1:three"}; !slices.Equal(msgs, want) {
		t.Errorf("lines = %v, want %v", msgs, want)
	}
	page, _ := s.ListBuildLogs(ctx, "b1", 1, 1)
	if len(page) != 1 || page[0].Message != "two" || page[0].Seq != 2 {
		t.Errorf("page after 1 = %+v", page)
	}
	if rest, _ := s.ListBuildLogs(ctx, "b1", 3, 10); len(rest) != 0 {
		t.Errorf("after the last line: %+v", rest)
	}
}

// contexts: uploaded contexts are found by key, listed once expired, and
// deleted; deleting a project expires its contexts so their blobs go too.
func contexts(t *testing.T, s store.Store) {
	ctx := context.Background()
	seed(t, s, "o1", "p1", "p2")
	mk := func(key, project string, expires time.Time) store.Context {
		c := store.Context{Key: key, OrgID: "o1", ProjectID: project, BlobKey: "contexts/" + project + "/" + key,
			Size: 10, SHA256: "ab", CreatedAt: now, ExpiresAt: expires}
		if err := s.CreateContext(ctx, c); err != nil {
			t.Fatal(err)
		}
		return c
	}
	k1 := mk("k1", "p1", now.Add(time.Hour))
	mk("k2", "p1", now.Add(2*time.Hour))
	mk("k3", "p2", now.Add(3*time.Hour))
	if err := s.CreateContext(ctx, k1); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Errorf("duplicate key: %v", err)
	}
	got, err := s.GetContext(ctx, "k1")
	if err != nil || got != k1 {
		t.Errorf("GetContext = %+v, %v; want %+v", got, err, k1)
	}
	if _, err := s.GetContext(ctx, "nope"); !errdefs.IsNotFound(err) {
		t.Errorf("missing context: %v", err)
	}
	if n, err := s.CountContexts(ctx, "p1", now.Add(90*time.Minute)); err != nil || n != 1 {
		t.Errorf("p1's contexts retained at +90m: %d, %v; want 1", n, err)
	}
	if n, _ := s.CountContexts(ctx, "p2", now); n != 1 {
		t.Errorf("p2's contexts: %d, want 1", n)
	}
	exp, _ := s.ListExpiredContexts(ctx, now.Add(150*time.Minute), 10)
	if len(exp) != 2 || exp[0].Key != "k1" || exp[1].Key != "k2" {
		t.Errorf("expired = %+v", exp)
	}
	if err := s.DeleteContext(ctx, "k1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetContext(ctx, "k1"); !errdefs.IsNotFound(err) {
		t.Errorf("deleted context still found: %v", err)
	}
	if err := s.DeleteProject(ctx, "p2"); err != nil {
		t.Fatal(err)
	}
	exp, _ = s.ListExpiredContexts(ctx, now, 10)
	if len(exp) != 1 || exp[0].Key != "k3" {
		t.Errorf("after deleting p2, expired = %+v; want its context k3", exp)
	}
}

// contextQuota: what contexts are charged, settling them, and pinning the
// digest of one uploaded without a declared digest.
func contextQuota(t *testing.T, s store.Store) {
	ctx := context.Background()
	seed(t, s, "o1", "p1", "p2")
	for _, c := range []store.Context{
		{Key: "declared", ProjectID: "p1", Size: 100, Charged: 100, SHA256: "aa", CreatedAt: now, ExpiresAt: now.Add(time.Hour)},
		{Key: "reserved", ProjectID: "p1", Charged: 1000, CreatedAt: now.Add(time.Second), ExpiresAt: now.Add(time.Hour)},
		{Key: "late", ProjectID: "p1", Charged: 5, CreatedAt: now.Add(time.Minute), ExpiresAt: now.Add(time.Hour)},
		{Key: "expired", ProjectID: "p1", Charged: 1 << 40, CreatedAt: now, ExpiresAt: now.Add(-time.Second)},
		{Key: "other", ProjectID: "p2", Charged: 7, CreatedAt: now, ExpiresAt: now.Add(time.Hour)},
	} {
		c.OrgID, c.BlobKey = "o1", "contexts/"+c.ProjectID+"/"+c.Key
		if err := s.CreateContext(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := s.ContextBytes(ctx, "p1", now); err != nil || n != 1105 {
		t.Errorf("ContextBytes(p1) = %d, %v; want 1105 (retained contexts only)", n, err)
	}
	if n, _ := s.ContextBytes(ctx, "nobody", now); n != 0 {
		t.Errorf("ContextBytes of a project without contexts = %d", n)
	}
	list, err := s.ListUnsettledContexts(ctx, "p1", now.Add(30*time.Second), 10)
	if err != nil || len(list) != 3 || list[0].Key != "declared" || list[1].Key != "expired" || list[2].Key != "reserved" {
		t.Errorf("ListUnsettledContexts = %+v, %v", list, err)
	}
	if err := s.SettleContext(ctx, "reserved", 300); err != nil {
		t.Fatal(err)
	}
	if err := s.SettleContext(ctx, "reserved", 999); err != nil { // settled once
		t.Fatal(err)
	}
	if c, _ := s.GetContext(ctx, "reserved"); c.Charged != 300 || !c.Settled {
		t.Errorf("after settling: %+v", c)
	}
	if n, _ := s.ContextBytes(ctx, "p1", now); n != 405 {
		t.Errorf("ContextBytes(p1) after settling = %d, want 405", n)
	}
	if list, _ := s.ListUnsettledContexts(ctx, "p1", now.Add(time.Hour), 10); len(list) != 3 {
		t.Errorf("unsettled after settling one: %+v", list)
	}

	// The first digest sticks; a declared one is never replaced.
	if got, err := s.PinContextDigest(ctx, "reserved", "11"); err != nil || got != "11" {
		t.Errorf("first pin = %q, %v", got, err)
	}
	if got, err := s.PinContextDigest(ctx, "reserved", "22"); err != nil || got != "11" {
		t.Errorf("second pin = %q, %v; want the first, 11", got, err)
	}
	if got, _ := s.PinContextDigest(ctx, "declared", "33"); got != "aa" {
		t.Errorf("pin over a declared digest = %q, want aa", got)
	}
	if _, err := s.PinContextDigest(ctx, "nope", "11"); !errdefs.IsNotFound(err) {
		t.Errorf("pin of a missing context: %v", err)
	}
}
