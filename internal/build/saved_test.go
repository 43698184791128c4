package build_test

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/build"
	"github.com/kiln-dev/kiln/internal/errdefs"
)

func TestSaveRefsAndTags(t *testing.T) {
	e := setup(t, time.Minute)
	ctx := context.Background()
	if err := e.svc.CheckSave(nil); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("--save on a server without a registry: %v", err)
	}
	svc := build.NewService(e.st, e.fleet, fakeCerts{}, build.Config{RegistryHost: func() string { return "127.0.0.1:7420" }}, slog.New(slog.DiscardHandler))
	b, _, err := svc.Create(ctx, e.org, "pa", 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.CheckSave([]string{"v1", "latest", "1.2.3-rc_1", strings.Repeat("x", 128)}); err != nil {
		t.Errorf("valid tags refused: %v", err)
	}
	for _, bad := range []string{"", ".hidden", "-x", "a/b", "a:b", "a b", "tag\n", strings.Repeat("x", 129), "ü", "x@sha256"} {
		if err := svc.CheckSave([]string{bad}); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("tag %q accepted: %v", bad, err)
		}
	}
	many := make([]string, build.MaxSaveTags+1)
	for i := range many {
		many[i] = "t"
	}
	if err := svc.CheckSave(many); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("%d tags accepted", len(many))
	}
	got := svc.SaveRefs(b, []string{"v1", "v1", b.ID})
	want := []string{"127.0.0.1:7420/pa:" + b.ID, "127.0.0.1:7420/pa:v1"}
	if !slices.Equal(got, want) {
		t.Errorf("SaveRefs = %q, want %q", got, want)
	}
}

// Pushes are recorded as "pushing <tag>" steps of the build, finished once.
func TestPushSteps(t *testing.T) {
	e := setup(t, time.Minute)
	ctx := context.Background()
	b, secret, _ := e.svc.Create(ctx, e.org, "pa", 1, nil)
	other, _, _ := e.svc.Create(ctx, e.org, "pb", 1, nil)
	id, err := e.svc.StartPush(ctx, e.org, b.ID, "registry.example.com/app:1")
	if err != nil {
		t.Fatal(err)
	}
	failed, err := e.svc.StartPush(ctx, e.org, b.ID, "registry.example.com/app:2")
	if err != nil {
		t.Fatal(err)
	}
	if err := e.svc.FinishPush(ctx, e.org, b.ID, id, nil); err != nil {
		t.Fatal(err)
	}
	msg := "denied"
	if err := e.svc.FinishPush(ctx, e.org, b.ID, failed, &msg); err != nil {
		t.Fatal(err)
	}
	again := "late"
	if err := e.svc.FinishPush(ctx, e.org, b.ID, id, &again); err != nil {
		t.Errorf("finishing twice: %v", err)
	}
	steps, _ := e.svc.Steps(ctx, e.org, b.ID)
	if len(steps) != 2 || steps[0].Name != "pushing registry.example.com/app:1" || steps[0].CompletedAt.IsZero() || steps[0].Error != "" ||
		steps[1].Error != "denied" {
		t.Errorf("steps = %+v", steps)
	}
	if st := build.CountedSteps(steps); len(st) != 0 {
		t.Errorf("push steps counted as build steps: %+v", st)
	}

	// Bad input and other builds' pushes.
	for _, tag := range []string{"", "a b", "x\ny", strings.Repeat("a", 600)} {
		if _, err := e.svc.StartPush(ctx, e.org, b.ID, tag); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("StartPush(%q): %v", tag, err)
		}
	}
	if err := e.svc.FinishPush(ctx, e.org, other.ID, id, nil); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("another build's push id: %v", err)
	}
	if err := e.svc.FinishPush(ctx, e.org, b.ID, "", nil); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("empty push id: %v", err)
	}
	bp := principalOf(t, e.st, secret)
	if _, err := e.svc.StartPush(ctx, bp, other.ID, "x/y:1"); !errdefs.IsNotFound(err) {
		t.Errorf("build token pushing another build: %v", err)
	}
	for i := 0; i < 98; i++ {
		if _, err := e.svc.StartPush(ctx, e.org, b.ID, "x/y:1"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.svc.StartPush(ctx, e.org, b.ID, "x/y:1"); !errors.Is(err, errdefs.ErrExhausted) {
		t.Errorf("101st push: %v", err)
	}
}
