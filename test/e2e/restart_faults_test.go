package e2e

// Faults of the control plane under running builds: kill -9 and restart of
// kiln serve, SIGSTOP longer than the health timeout (issue rows 2, 5, 8;
// RELIABILITY.md 2 and 11).

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	cliv1 "github.com/depot/depot-go/proto/depot/cli/v1"

	kilnv1 "github.com/kiln-dev/kiln/gen/kiln/v1"
	"github.com/kiln-dev/kiln/internal/client"
	"github.com/kiln-dev/kiln/internal/platform"
	"github.com/kiln-dev/kiln/internal/session"
)

// restartRecorded is a build's status and error as `kiln builds get`
// reports them (kiln.v1 GetBuild).
func restartRecorded(t *testing.T, s *server, id string) *kilnv1.Build {
	t.Helper()
	b := s.getSourceBuild(t, s.Token, id)
	noServerPath(t, s, "the build's recorded error", b.Error)
	return b
}

// After kill -9 of kiln serve, a client build whose builder died with it is
// failed at once on start, saying why, instead of staying running for the
// health timeout and then being recorded as abandoned by its client. A
// build that never got a builder keeps running (its client may still
// connect). A client whose FinishBuild met the dead server retries it
// until the server is back, and its success is what kiln records.
func TestRestartReconcilesClientBuilds(t *testing.T) {
	t.Parallel()
	s := startServer(t) // the default health timeout, 5 minutes
	proj := s.createProject(t, "restarted")
	cfg := client.Config{APIURL: s.URL, Token: s.Token}
	ctx := t.Context()

	// One build that will hear nothing more from its client, one whose
	// client finished its solve just as the server died, one still waiting
	// for a builder.
	orphan, orphanTok := s.createBuild(t, proj, s.Token)
	s.activeConnection(t, orphan, orphanTok)
	late, err := session.Create(ctx, cfg, proj, &cliv1.BuildOptions{Command: cliv1.Command_COMMAND_BUILD})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 90*time.Second, "the builder to be ready for the second build", func() bool {
		l, err := late.Acquire(ctx, platform.AMD64)
		if err != nil {
			t.Fatalf("Acquire: %v", err)
		}
		return l.Ready
	})
	waiting, waitingTok := s.createBuild(t, proj, s.Token)

	s.kill9(t)
	// The late client reports its success while kiln serve is down; it is
	// back 3 s later, as a supervisor restarts it.
	var finishErr error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		finishErr = late.Finish(nil)
	}()
	time.Sleep(3 * time.Second)
	started := time.Now()
	if err := s.boot(); err != nil {
		t.Fatal(err)
	}

	// At once, not after the 5-minute health timeout.
	b := restartRecorded(t, s, orphan)
	if b.Status != kilnv1.BuildStatus_BUILD_STATUS_FAILED || !strings.Contains(b.Error, "the control plane restarted during the build") {
		t.Errorf("the orphaned build %s after restart: %v %q; want failed: the control plane restarted during the build", time.Since(started).Round(time.Millisecond), b.Status, b.Error)
	}
	if b := restartRecorded(t, s, waiting); b.Status != kilnv1.BuildStatus_BUILD_STATUS_RUNNING {
		t.Errorf("the build without a builder after restart: %v %q; want still running", b.Status, b.Error)
	}
	wg.Wait()
	if finishErr != nil {
		t.Errorf("the late client's Finish across the restart: %v", finishErr)
		noServerPath(t, s, "Finish's error", finishErr.Error())
	}
	if b := restartRecorded(t, s, late.ID); b.Status != kilnv1.BuildStatus_BUILD_STATUS_SUCCEEDED {
		t.Errorf("the build whose client reported success across the restart: %v %q; want succeeded (the client's real outcome)", b.Status, b.Error)
	}
	// The orphan's client, should it report failure later, changes nothing
	// and hears nothing false.
	_, err = s.api().FinishBuild(ctx, bearer(&cliv1.FinishBuildRequest{BuildId: orphan,
		Result: &cliv1.FinishBuildRequest_Error{Error: &cliv1.FinishBuildRequest_BuildError{Error: "EOF"}}}, s.Token))
	if err != nil {
		t.Errorf("a late failure report for the orphaned build: %v", err)
	}
	if b := restartRecorded(t, s, orphan); !strings.Contains(b.Error, "the control plane restarted") {
		t.Errorf("after the late failure report the error is %q", b.Error)
	}
	// The build that was waiting for a builder still gets one.
	s.activeConnection(t, waiting, waitingTok)
}

// The same fault as a user meets it: kill -9 of kiln serve under a running
// `kiln build`. The build fails (its builder died with the server), the
// client waits for the server to come back to report it, and kiln records
// why at once; nothing stays running.
func TestKilledServerUnderCLIBuild(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	proj := s.createProject(t, "clikill")
	dir := writeContext(t, map[string]string{"Dockerfile": baseStages + "FROM busybox\nRUN sleep 2353\n"})
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, kilnBin, "build", "--project", proj, "--progress", "plain", ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "KILN_API_URL="+s.URL, "KILN_TOKEN="+s.Token, "HOME="+t.TempDir())
	var stderr syncBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	eventually(t, 2*time.Minute, "the RUN sleep to start", func() bool { return len(processesNamed("sleep 2353")) > 0 })
	id := s.latestBuild(t, proj)

	s.kill9(t)
	time.Sleep(3 * time.Second)
	s.start(t)
	restarted := time.Now()
	select {
	case err := <-done:
		out := stderr.String()
		t.Logf("kiln build ended %s after the restart (%v):\n%s", time.Since(restarted).Round(time.Millisecond), err, tail(out, 1500))
		noServerPath(t, s, "kiln build's output", out)
		if err == nil {
			t.Errorf("kiln build exited 0 although its builder died with kiln serve")
		}
		// The client asks the server why its builder connection broke
		// (session/lost.go) and says what kiln recorded.
		if !strings.Contains(out, "the control plane restarted during the build") {
			t.Errorf("kiln build does not say the control plane restarted")
		}
	case <-time.After(90 * time.Second):
		t.Fatalf("kiln build did not end within 90s of the restart:\n%s", tail(stderr.String(), 3000))
	}
	if b := restartRecorded(t, s, id); b.Status != kilnv1.BuildStatus_BUILD_STATUS_FAILED || !strings.Contains(b.Error, "the control plane restarted during the build") {
		t.Errorf("recorded: %v %q; want failed: the control plane restarted during the build", b.Status, b.Error)
	}
	eventually(t, 20*time.Second, "the dead builder's RUN process to be gone", func() bool { return len(processesNamed("sleep 2353")) == 0 })
}

// restartHealth reports a build's health every 500ms while on is set, as a
// client's keep-alive does.
func restartHealth(ctx context.Context, s *server, id, tok string, on *atomic.Bool) {
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if on.Load() {
			rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			s.api().ReportBuildHealth(rctx, bearer(&cliv1.ReportBuildHealthRequest{BuildId: id}, tok))
			cancel()
		}
	}
}

// Pausing kiln serve (SIGSTOP) for longer than the health timeout does not
// cancel a healthy build when it resumes: no client could reach the server
// while it was stopped, so the timeout starts afresh. A client that then
// stays silent is still canceled a timeout later.
func TestPausedServerDoesNotReapHealthyBuilds(t *testing.T) {
	t.Parallel()
	const timeout = 4 * time.Second
	s := startServer(t, "--health-timeout", timeout.String())
	proj := s.createProject(t, "paused")
	id, tok := s.createBuild(t, proj, s.Token)
	s.activeConnection(t, id, tok)
	var on atomic.Bool
	on.Store(true)
	ctx, stop := context.WithCancel(t.Context())
	defer stop()
	go restartHealth(ctx, s, id, tok, &on)
	time.Sleep(2 * time.Second)

	// The client's reports cannot arrive while the server is stopped; the
	// first after the resume comes a second later.
	on.Store(false)
	s.pause(t)
	time.Sleep(2*timeout - time.Second)
	s.resume(t)
	time.Sleep(time.Second)
	on.Store(true)
	time.Sleep(timeout / 2)
	if st := s.buildStatus(t, proj, id); st != cliv1.BuildStatus_BUILD_STATUS_RUNNING {
		t.Fatalf("a healthy build after a %s pause of kiln serve: %v; want running", 2*timeout-time.Second, st)
	}
	if b, _ := os.ReadFile(s.log); !bytes.Contains(b, []byte("running builds get a full health timeout from now")) {
		t.Errorf("the server log does not say it noticed the pause")
	}
	// Silence the server observes still counts.
	on.Store(false)
	eventually(t, 3*timeout, "the silent build to be canceled", func() bool {
		return s.buildStatus(t, proj, id) == cliv1.BuildStatus_BUILD_STATUS_CANCELED
	})
}

// A client whose build the server ended otherwise (here: canceled for
// silence) is told so when it reports success, in words that say how kiln
// recorded it, so kiln build exits non-zero instead of printing success.
func TestFinishLearnsTheRecordedOutcome(t *testing.T) {
	t.Parallel()
	s := startServer(t, "--health-timeout", "2s")
	proj := s.createProject(t, "overruled")
	r, err := session.Create(t.Context(), client.Config{APIURL: s.URL, Token: s.Token}, proj, &cliv1.BuildOptions{Command: cliv1.Command_COMMAND_BUILD})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "the silent build to be canceled", func() bool {
		return s.buildStatus(t, proj, r.ID) == cliv1.BuildStatus_BUILD_STATUS_CANCELED
	})
	err = r.Finish(nil)
	var u *session.UnrecordedError
	if !errors.As(err, &u) || !strings.Contains(err.Error(), "had already ended as canceled") || !strings.Contains(err.Error(), "no health report") {
		t.Fatalf("Finish(success) of a canceled build: %v; want an UnrecordedError saying it was canceled for silence", err)
	}
	noServerPath(t, s, "Finish's error", err.Error())
	if st := s.buildStatus(t, proj, r.ID); st != cliv1.BuildStatus_BUILD_STATUS_CANCELED {
		t.Errorf("after the late success the build is %v; want still canceled", st)
	}
	// The same result twice is fine (a retry whose answer was lost).
	if err := r.Finish(context.Canceled); err != nil {
		t.Errorf("Finish(canceled) of a canceled build: %v; want nil", err)
	}
}

// `kiln builds logs -f` survives kill -9 of kiln serve: it reconnects with
// backoff once the server is back, prints no line twice, and ends with the
// build's recorded outcome (interrupted by the restart) and exit code 1.
func TestLogsFollowSurvivesKill9(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	dir := writeContext(t, map[string]string{"Dockerfile": baseStages +
		"FROM busybox\nRUN for i in 1 2 3 4 5; do echo tick-$i; done; sleep 2351\n"})
	env := []string{"KILN_API_URL=" + s.URL, "KILN_TOKEN=" + s.Token}
	res := s.kiln(t, dir, env, "build", "--detach", "--customer", "followco", "--progress", "quiet", ".")
	if res.Err != nil {
		t.Fatalf("kiln build --detach: %v\n%s", res.Err, res.Stderr)
	}
	id := strings.TrimSpace(res.Stdout)

	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, kilnBin, "builds", "logs", "-f", id)
	cmd.Env = append(os.Environ(), "KILN_API_URL="+s.URL, "KILN_TOKEN="+s.Token, "HOME="+t.TempDir())
	var stdout, stderr syncBuffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	eventually(t, 3*time.Minute, "logs -f to print the RUN's lines", func() bool { return strings.Contains(stdout.String(), "tick-5") })
	eventually(t, 30*time.Second, "the RUN to reach its sleep", func() bool { return len(processesNamed("sleep 2351")) > 0 })

	s.kill9(t)
	time.Sleep(2 * time.Second)
	s.start(t)
	select {
	case err := <-done:
		out, errOut := stdout.String(), stderr.String()
		t.Logf("logs -f ended (%v):\nstdout:\n%s\nstderr:\n%s", err, tail(out, 3000), tail(errOut, 2000))
		noServerPath(t, s, "logs -f output", out+errOut)
		if strings.Contains(errOut, "incomplete envelope") || strings.Contains(errOut, "unexpected EOF") {
			t.Errorf("logs -f gave up on the broken stream instead of reconnecting")
		}
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 1 || !strings.Contains(errOut, "interrupted: kiln serve stopped") {
			t.Errorf("logs -f: %v; want exit code 1 with the build's recorded outcome (interrupted by the restart)", err)
		}
		for i := 1; i <= 5; i++ {
			if n := strings.Count(out, "tick-"+string(rune('0'+i))+"\n"); n != 1 {
				t.Errorf("line tick-%d printed %d times; want once (resume after the last line printed)", i, n)
			}
		}
		if !strings.Contains(out, "build "+id+": failed") {
			t.Errorf("logs -f did not print the final status")
		}
	case <-time.After(2 * time.Minute):
		t.Fatalf("logs -f did not end within 2 minutes of the restart:\nstdout:\n%s\nstderr:\n%s", tail(stdout.String(), 3000), tail(stderr.String(), 3000))
	}
}

// RELIABILITY.md 11: a client killed mid-build (kill -9 of `kiln build`)
// has its build canceled by the health timeout and its builder released;
// the idle builder then stops with its cache kept, and the project's next
// build starts from that cache promptly.
func TestKilledClientBuildIsReaped(t *testing.T) {
	t.Parallel()
	s := startServer(t, "--health-timeout", "3s", "--builder-idle-timeout", "2s")
	proj := s.createProject(t, "killedclient")
	first := "FROM busybox\nRUN echo kept > /kept\n"
	dir := writeContext(t, map[string]string{"Dockerfile": baseStages + first + "RUN sleep 2347\n"})
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, kilnBin, "build", "--project", proj, "--progress", "plain", ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "KILN_API_URL="+s.URL, "KILN_TOKEN="+s.Token, "HOME="+t.TempDir())
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	eventually(t, 2*time.Minute, "the RUN sleep to start", func() bool { return len(processesNamed("sleep 2347")) > 0 })
	id := s.latestBuild(t, proj)
	cmd.Process.Kill()
	<-done

	eventually(t, 20*time.Second, "the killed client's build to be canceled", func() bool {
		return s.buildStatus(t, proj, id) == cliv1.BuildStatus_BUILD_STATUS_CANCELED
	})
	if b := restartRecorded(t, s, id); !strings.Contains(b.Error, "no health report") {
		t.Errorf("recorded error %q; want it to say the client stopped reporting", b.Error)
	}
	eventually(t, 20*time.Second, "the RUN process to end", func() bool { return len(processesNamed("sleep 2347")) == 0 })
	eventually(t, 30*time.Second, "the released builder to stop when idle", func() bool {
		for _, b := range s.builders(t) {
			if b.ProjectID == proj && (len(b.Leases) > 0 || b.State != "stopped") {
				return false
			}
		}
		return true
	})
	next := writeContext(t, map[string]string{"Dockerfile": baseStages + first + "RUN echo next\n"})
	r := s.mustKiln(t, next, "build", "--project", proj, "--progress", "plain", ".")
	if r.Took > time.Minute {
		t.Errorf("the next build took %s; want it to start and finish within a minute", r.Took.Round(time.Second))
	}
	if !restartStepCached(r.Stderr, "RUN echo kept > /kept") {
		t.Errorf("the next build did not reuse the cache kept by the stopped builder:\n%s", tail(r.Stderr, 3000))
	}
}

// restartStepCached reports whether plain progress shows the step whose
// line ends with name as cached: "#N [stage 2/3] RUN …" then "#N CACHED".
func restartStepCached(progress, name string) bool {
	m := regexp.MustCompile(`(?m)^(#\d+) \[[^\]]*\] ` + regexp.QuoteMeta(name) + `$`).FindStringSubmatch(progress)
	return m != nil && strings.Contains(progress, m[1]+" CACHED\n")
}

// A client whose health reports stop reaching kiln while it is solving on
// its builder (here: the health timeout is shorter than the client's
// report interval) is never canceled for silence: an open builder
// connection shows the solve is in progress. The build succeeds, and the
// exit code and the record agree.
func TestSolvingBuildIsNotReaped(t *testing.T) {
	t.Parallel()
	s := startServer(t, "--health-timeout", "2s")
	proj := s.createProject(t, "solving")
	dir := writeContext(t, map[string]string{"Dockerfile": baseStages + "FROM busybox\nRUN sleep 12 && echo slept > /slept\n"})
	r := s.kiln(t, dir, nil, "build", "--project", proj, "--progress", "plain", ".")
	noServerPath(t, s, "kiln build's output", r.Stdout+r.Stderr)
	if r.Err != nil {
		t.Fatalf("a build solving for 12 s under a 2 s health timeout: %v\n%s", r.Err, tail(r.Stderr, 3000))
	}
	if st := s.buildStatus(t, proj, s.latestBuild(t, proj)); st != cliv1.BuildStatus_BUILD_STATUS_FINISHED {
		t.Errorf("kiln build exited 0 but the build is recorded %v", st)
	}
}
