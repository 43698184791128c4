package builder

import (
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// healthFleet is a Fleet with one ready builder in use whose "buildkitd" is
// a sleep process (never answers a probe: no socket).
func healthFleet(t *testing.T) (*Fleet, *builder, *exec.Cmd) {
	t.Helper()
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() { cmd.Process.Kill(); <-exited })
	f := &Fleet{cfg: Config{StallTimeout: 10 * time.Second}, log: slog.New(slog.DiscardHandler), builders: map[key]*builder{}}
	b := &builder{projectID: "p", platform: "linux/amd64", dir: t.TempDir(), state: StateReady,
		Use: Use{leases: map[string]time.Time{"build-1": time.Now()}}, changed: make(chan struct{})}
	b.sockDir = b.dir
	b.run = &run{stop: make(chan struct{}), done: make(chan struct{}), proc: cmd.Process}
	f.builders[key{"p", "linux/amd64"}] = b
	t.Cleanup(f.wg.Wait) // the probes
	return f, b, cmd
}

func alive(cmd *exec.Cmd) bool {
	return cmd.Process.Signal(syscall.Signal(0)) == nil
}

// Silence counts only while kiln could watch: after a gap in its own
// rounds (kiln serve stopped, then continued) a builder in use gets the
// whole stall timeout again; a builder silent for the timeout while kiln
// watched is recycled with "stopped responding".
func TestStallCountsObservedTimeOnly(t *testing.T) {
	f, b, cmd := healthFleet(t)
	start := time.Now()
	b.answered = start

	// kiln was stopped for a minute: not the builder's fault.
	f.checkHealth(start.Add(time.Minute), true)
	if b.run.cause != nil || !alive(cmd) {
		t.Fatalf("recycled after a gap kiln did not observe: %v", b.run.cause)
	}
	f.checkHealth(start.Add(time.Minute+5*time.Second), false)
	if b.run.cause != nil {
		t.Fatalf("recycled 5s into a 10s stall timeout: %v", b.run.cause)
	}
	f.checkHealth(start.Add(time.Minute+11*time.Second), false)
	if b.run.cause == nil || !strings.Contains(b.run.cause.Error(), "the builder for project p (linux/amd64) stopped responding for 11s") {
		t.Fatalf("cause = %v", b.run.cause)
	}
	if b.state != StateCrashed || b.run.keepLeases {
		t.Errorf("state %s, keepLeases %v", b.state, b.run.keepLeases)
	}
	deadline := time.Now().Add(5 * time.Second)
	for alive(cmd) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if alive(cmd) {
		t.Error("the stalled builder's process was not killed")
	}
}

// A builder not in use is never blamed for silence; an out-of-disk one is
// recycled as soon as no connection is open, its leases kept.
func TestWedgedBuilderWaitsForOpenConnections(t *testing.T) {
	f, b, _ := healthFleet(t)
	b.leases = map[string]time.Time{}
	b.answered = time.Now().Add(-time.Hour)
	f.checkHealth(time.Now(), false)
	if b.run.cause != nil {
		t.Fatalf("an idle builder was recycled for silence: %v", b.run.cause)
	}

	f.names = map[string]*builder{"p-amd64.builder.kiln": b}
	b.serverName = "p-amd64.builder.kiln"
	release := f.Hold(b.serverName)
	r := b.run
	f.diskFull(b, r)
	if b.wedged == nil {
		t.Fatal("diskFull did not mark the builder")
	}
	f.checkHealth(time.Now(), false)
	if r.cause != nil {
		t.Fatal("recycled while a solve is in progress")
	}
	release()
	release() // once only
	if b.conns != 0 {
		t.Fatalf("conns = %d after release", b.conns)
	}
	f.checkHealth(time.Now(), false)
	if r.cause == nil || !strings.Contains(r.cause.Error(), "ran out of disk space") || !r.keepLeases {
		t.Fatalf("cause %v keepLeases %v", r.cause, r.keepLeases)
	}
}

// The disk reserve is made when there is room, released when a builder
// runs out of disk, and made again once there is room.
func TestDiskReserve(t *testing.T) {
	f := &Fleet{root: t.TempDir(), log: slog.New(slog.DiscardHandler)}
	f.keepReserve()
	fi, err := os.Stat(f.reservePath())
	if err != nil || fi.Size() != reserveBytes {
		t.Fatalf("reserve after keepReserve: %v, %v", fi, err)
	}
	if !f.releaseReserve() {
		t.Fatal("releaseReserve found no reserve")
	}
	if _, err := os.Stat(f.reservePath()); !os.IsNotExist(err) {
		t.Fatalf("reserve after release: %v", err)
	}
	if f.releaseReserve() {
		t.Error("releaseReserve twice released twice")
	}
	f.keepReserve()
	if _, err := os.Stat(f.reservePath()); err != nil {
		t.Errorf("reserve not made again: %v", err)
	}
}

// A lease counts as held only on a builder that has not stopped.
func TestLeased(t *testing.T) {
	f, b, _ := healthFleet(t)
	if !f.Leased("p", "linux/amd64", "build-1") {
		t.Error("the ready builder's lease is not reported")
	}
	if f.Leased("p", "linux/amd64", "build-2") || f.Leased("q", "linux/amd64", "build-1") || f.Leased("p", "linux/arm64", "build-1") {
		t.Error("a lease no builder holds is reported")
	}
	b.state = StateStopped
	if f.Leased("p", "linux/amd64", "build-1") {
		t.Error("a stopped builder's lease is reported")
	}
}
