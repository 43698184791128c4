package build_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/build"
)

// createSource stores a queued source build in project pa.
func createSource(t *testing.T, e env, id string) {
	t.Helper()
	if err := e.st.CreateBuild(context.Background(), build.Build{ID: id, ProjectID: "pa", OrgID: "o", Status: build.Queued,
		Kind: build.KindSource, Secrets: "sealed", CreatedAt: time.Now().UTC()}); err != nil {
		t.Fatal(err)
	}
}

// The claim is StartSource's conditional update: the first replica gets
// the build, stamped with its id; a second claim, or one of a canceled
// build, gets nothing.
func TestStartSourceClaimsOnce(t *testing.T) {
	e := setup(t, time.Minute)
	ctx := context.Background()
	createSource(t, e, "b1")
	b, ok, err := e.svc.StartSource(ctx, "b1", "r1")
	if err != nil || !ok || b.Status != build.Running || b.Replica != "r1" {
		t.Fatalf("first claim: %v %v %+v", ok, err, b)
	}
	if _, ok, err := e.svc.StartSource(ctx, "b1", "r2"); ok || err != nil {
		t.Errorf("second claim: ok=%v err=%v", ok, err)
	}
	createSource(t, e, "b2")
	if _, err := e.svc.FinishSource(ctx, "b2", build.Outcome{Result: build.Result{Status: build.Canceled, Error: "canceled"}}); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := e.svc.StartSource(ctx, "b2", "r1"); ok || err != nil {
		t.Errorf("claim of a canceled build: ok=%v err=%v", ok, err)
	}
}

// A dead replica's build is queued again with a note in its error and
// log; the old run's end is then ignored, the new run's recorded, and a
// cancel (no replica) ends it wherever it runs.
func TestRequeueSource(t *testing.T) {
	e := setup(t, time.Minute)
	ctx := context.Background()
	createSource(t, e, "b1")
	if _, _, err := e.svc.StartSource(ctx, "b1", "dead"); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := e.svc.RequeueSource(ctx, "b1", "other", "x"); ok || err != nil {
		t.Errorf("requeue naming a replica that does not run it: ok=%v err=%v", ok, err)
	}
	b, ok, err := e.svc.RequeueSource(ctx, "b1", "dead", "restarted: replica dead stopped")
	if err != nil || !ok || b.Status != build.Queued || b.Replica != "" || b.Secrets != "sealed" || !strings.Contains(b.Error, "restarted") {
		t.Fatalf("requeue: %v %v %+v", ok, err, b)
	}
	logs, err := e.st.ListBuildLogs(ctx, "b1", 0, 10)
	if err != nil || len(logs) != 1 || !strings.Contains(logs[0].Message, "restarted: replica dead stopped") {
		t.Errorf("requeue note in the log: %v %+v", err, logs)
	}
	// The dead replica's run reports late: ignored.
	if b, err := e.svc.FinishSource(ctx, "b1", build.Outcome{Result: build.Result{Status: build.Failed, Error: "late"}, Replica: "dead"}); err != nil || b.Status != build.Queued {
		t.Errorf("a queued-again build ended by its old run: %v %s", err, b.Status)
	}
	if _, ok, _ := e.svc.StartSource(ctx, "b1", "live"); !ok {
		t.Fatal("the live replica could not claim the requeued build")
	}
	if b, _ := e.svc.FinishSource(ctx, "b1", build.Outcome{Result: build.Result{Status: build.Failed, Error: "late"}, Replica: "dead"}); b.Status != build.Running {
		t.Errorf("a taken-over build ended by its old run: %s", b.Status)
	}
	e.svc.SetPushing(ctx, "b1", "dead")
	if b, _ := e.st.GetBuild(ctx, "b1"); b.Status != build.Running {
		t.Errorf("a taken-over build marked pushing by its old run: %s", b.Status)
	}
	e.svc.SetPushing(ctx, "b1", "live")
	if b, _ := e.st.GetBuild(ctx, "b1"); b.Status != build.Pushing {
		t.Errorf("the live run's push was not recorded: %s", b.Status)
	}
	b, err = e.svc.FinishSource(ctx, "b1", build.Outcome{Result: build.Result{Status: build.Succeeded}, ImageDigest: "sha256:x", Replica: "live"})
	if err != nil || b.Status != build.Succeeded || b.Secrets != "" {
		t.Errorf("the new run's end: %v %+v", err, b)
	}
	if _, ok, err := e.svc.RequeueSource(ctx, "b1", "live", "x"); ok || err != nil {
		t.Errorf("requeue of an ended build: ok=%v err=%v", ok, err)
	}
	// A cancel names no replica: it ends the build wherever it runs.
	createSource(t, e, "b2")
	e.svc.StartSource(ctx, "b2", "r1")
	if b, _ := e.svc.FinishSource(ctx, "b2", build.Outcome{Result: build.Result{Status: build.Canceled, Error: "canceled"}}); b.Status != build.Canceled {
		t.Errorf("cancel of a build on another replica: %s", b.Status)
	}
}
