package storetest

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/audit"
	"github.com/kiln-dev/kiln/internal/build"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/store"
)

// usageAndShares covers build statistics and shares: keyset paging of builds (including
// builds created in the same millisecond), per-project usage sums, the
// last-uncached-step lookup, and shares.
func usageAndShares(t *testing.T, s store.Store) {
	ctx := context.Background()
	seed(t, s, "o1", "p1", "p2")
	seed(t, s, "o2", "q1")
	mk := func(id, project, org string, created time.Duration, dur time.Duration, status build.Status) {
		t.Helper()
		b := build.Build{ID: id, ProjectID: project, OrgID: org, Status: status,
			CreatedAt: now.Add(created), StartedAt: now.Add(created)}
		if status != build.Running {
			b.FinishedAt = b.StartedAt.Add(dur)
		}
		if err := s.CreateBuild(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	// Three builds share one creation millisecond: paging must neither skip
	// nor repeat them.
	mk("a1", "p1", "o1", 0, 1500*time.Millisecond, build.Succeeded)
	mk("a2", "p1", "o1", time.Minute, 2*time.Second, build.Failed)
	mk("a3", "p1", "o1", time.Minute, 250*time.Millisecond, build.Canceled)
	mk("a4", "p1", "o1", time.Minute, 0, build.Running)
	mk("a5", "p1", "o1", 2*time.Hour, time.Second, build.Succeeded) // outside the period below
	mk("b1", "p2", "o1", time.Minute, 3*time.Second, build.Succeeded)
	mk("c1", "q1", "o2", time.Minute, 9*time.Second, build.Succeeded)

	var seen []string
	q := build.Query{ProjectID: "p1", Limit: 2}
	for i := 0; i < 10; i++ {
		page, err := s.QueryBuilds(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range page {
			seen = append(seen, b.ID)
		}
		if len(page) < q.Limit {
			break
		}
		q.BeforeCreated, q.BeforeID = page[len(page)-1].CreatedAt, page[len(page)-1].ID
	}
	if fmt.Sprint(seen) != "[a5 a4 a3 a2 a1]" {
		t.Errorf("paged builds = %v, want [a5 a4 a3 a2 a1]", seen)
	}
	inPeriod, _ := s.QueryBuilds(ctx, build.Query{ProjectID: "p1", From: now, To: now.Add(time.Hour), Limit: 10})
	if len(inPeriod) != 4 {
		t.Errorf("builds in [now, now+1h) = %d, want 4", len(inPeriod))
	}

	usage, err := s.BuildUsage(ctx, "o1", now, now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	want := []build.ProjectUsage{
		{ProjectID: "p1", Builds: 4, BuildTime: 3750 * time.Millisecond}, // the running build counts, adds no time
		{ProjectID: "p2", Builds: 1, BuildTime: 3 * time.Second},
	}
	if fmt.Sprint(usage) != fmt.Sprint(want) {
		t.Errorf("BuildUsage(o1) = %+v, want %+v", usage, want)
	}
	if u, _ := s.BuildUsage(ctx, "o1", now.Add(3*time.Hour), now.Add(4*time.Hour)); len(u) != 0 {
		t.Errorf("usage of an empty period = %+v", u)
	}

	// a1 ran "RUN make" uncached (1s); a2 ran it again (3s), then b1 in
	// another project (7s). For a build created after a2, the estimate is
	// a2's run: the latest of its own project before it.
	s.PutSteps(ctx, "a1", []build.Step{{Digest: "d1", Name: "RUN make", StartedAt: now, CompletedAt: now.Add(time.Second)}})
	s.PutSteps(ctx, "a2", []build.Step{
		{Digest: "d2", Name: "RUN make", StartedAt: now.Add(time.Minute), CompletedAt: now.Add(time.Minute + 3*time.Second)},
		{Digest: "d3", Name: "RUN test", StartedAt: now.Add(time.Minute), CompletedAt: now.Add(2 * time.Minute), Error: "exit 1"},
		{Digest: "d4", Name: "COPY .", Cached: true, StartedAt: now.Add(time.Minute), CompletedAt: now.Add(time.Minute)},
	})
	s.PutSteps(ctx, "b1", []build.Step{{Digest: "d5", Name: "RUN make", StartedAt: now.Add(time.Minute), CompletedAt: now.Add(time.Minute + 7*time.Second)}})
	got, err := s.LastUncachedStepDurations(ctx, "p1", []string{"RUN make", "RUN test", "COPY .", "nope", "RUN make"}, now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got["RUN make"] != 3*time.Second {
		t.Errorf("LastUncachedStepDurations = %v, want only RUN make = 3s (failed and cached runs do not count)", got)
	}
	if got, _ := s.LastUncachedStepDurations(ctx, "p1", []string{"RUN make"}, now.Add(30*time.Second)); got["RUN make"] != time.Second {
		t.Errorf("before a2: %v, want a1's 1s", got)
	}

	sh := build.Share{BuildID: "a1", Token: "tok1", CreatedBy: "t1", CreatedAt: now}
	if err := s.CreateBuildShare(ctx, sh); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateBuildShare(ctx, build.Share{BuildID: "a1", Token: "tok2", CreatedAt: now}); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Errorf("second share of a build: %v, want ErrAlreadyExists", err)
	}
	if err := s.CreateBuildShare(ctx, build.Share{BuildID: "b1", Token: "tok1", CreatedAt: now}); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Errorf("duplicate share token: %v, want ErrAlreadyExists", err)
	}
	if got, err := s.GetBuildShareByToken(ctx, "tok1"); err != nil || got != sh {
		t.Errorf("GetBuildShareByToken = %+v, %v", got, err)
	}
	if got, err := s.GetBuildShare(ctx, "a1"); err != nil || got.Token != "tok1" {
		t.Errorf("GetBuildShare = %+v, %v", got, err)
	}
	if _, err := s.GetBuildShareByToken(ctx, "TOK1"); !errdefs.IsNotFound(err) {
		t.Errorf("share tokens must match exactly: %v", err)
	}
	if err := s.DeleteBuildShare(ctx, "a1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetBuildShareByToken(ctx, "tok1"); !errdefs.IsNotFound(err) {
		t.Errorf("revoked share still found: %v", err)
	}
	if err := s.DeleteBuildShare(ctx, "a1"); !errdefs.IsNotFound(err) {
		t.Errorf("second revoke: %v", err)
	}
	// Deleting a project drops its builds' shares.
	s.CreateBuildShare(ctx, build.Share{BuildID: "b1", Token: "tok3", CreatedAt: now})
	if err := s.DeleteProject(ctx, "p2"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetBuildShareByToken(ctx, "tok3"); !errdefs.IsNotFound(err) {
		t.Errorf("share of a deleted project's build: %v", err)
	}
}

// auditLog covers the audit log: organization scoping (with unattributed
// events), kind and time filters, paging, and pruning by age and count.
func auditLog(t *testing.T, s store.Store) {
	ctx := context.Background()
	add := func(id, kind, org string, at time.Duration) {
		t.Helper()
		e := audit.Entry{ID: id, Kind: kind, OrgID: org, ProjectID: "p", Actor: "tok_x", At: now.Add(at),
			Detail: map[string]string{"procedure": "/x.Y/Z", "n": id}}
		if err := s.CreateAuditEvent(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	add("e1", "token_created", "o1", 0)
	add("e2", "denied", "", time.Second)
	add("e3", "denied", "o2", 2*time.Second)
	add("e5", "token_deleted", "o1", 3*time.Second)
	add("e4", "denied", "o1", 3*time.Second) // same millisecond as e5: ordered by id
	if err := s.CreateAuditEvent(ctx, audit.Entry{ID: "e1", Kind: "x", At: now}); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Errorf("duplicate id: %v", err)
	}
	ids := func(es []audit.Entry) string {
		var out []string
		for _, e := range es {
			out = append(out, e.ID)
		}
		return fmt.Sprint(out)
	}
	all, err := s.ListAuditEvents(ctx, audit.EntryQuery{OrgIDs: []string{"o1", ""}, Limit: 10})
	if err != nil {
		t.Fatal(err)
	}
	if ids(all) != "[e1 e2 e4 e5]" {
		t.Errorf("o1 + unattributed = %s, want [e1 e2 e4 e5]", ids(all))
	}
	if all[0].Detail["n"] != "e1" || all[0].Actor != "tok_x" || !all[0].At.Equal(now) {
		t.Errorf("event round trip: %+v", all[0])
	}
	if got, _ := s.ListAuditEvents(ctx, audit.EntryQuery{OrgIDs: []string{"o1", ""}, Kinds: []string{"denied"}, Limit: 10}); ids(got) != "[e2 e4]" {
		t.Errorf("kind filter = %s", ids(got))
	}
	if got, _ := s.ListAuditEvents(ctx, audit.EntryQuery{OrgIDs: []string{"o1"}, Since: now.Add(time.Second), Limit: 10}); ids(got) != "[e4 e5]" {
		t.Errorf("since filter = %s", ids(got))
	}
	if got, _ := s.ListAuditEvents(ctx, audit.EntryQuery{Limit: 10}); len(got) != 0 {
		t.Errorf("no organization selected, got %s", ids(got))
	}
	page1, _ := s.ListAuditEvents(ctx, audit.EntryQuery{OrgIDs: []string{"o1", ""}, Limit: 3})
	last := page1[len(page1)-1]
	page2, _ := s.ListAuditEvents(ctx, audit.EntryQuery{OrgIDs: []string{"o1", ""}, Limit: 3, AfterAt: last.At, AfterID: last.ID})
	if ids(page1) != "[e1 e2 e4]" || ids(page2) != "[e5]" {
		t.Errorf("pages = %s %s", ids(page1), ids(page2))
	}

	// Age: e1 goes. Count: of e2..e5 the newest 2 stay (e4, e5).
	n, err := s.PruneAuditEvents(ctx, now.Add(500*time.Millisecond), 2)
	if err != nil {
		t.Fatal(err)
	}
	left, _ := s.ListAuditEvents(ctx, audit.EntryQuery{OrgIDs: []string{"o1", "o2", ""}, Limit: 10})
	if n != 3 || ids(left) != "[e4 e5]" {
		t.Errorf("after prune: deleted %d, left %s; want 3 and [e4 e5]", n, ids(left))
	}
	if n, _ := s.PruneAuditEvents(ctx, now, 0); n != 0 {
		t.Errorf("prune with nothing old and no cap deleted %d", n)
	}
}
