package kilntest

import (
	"bytes"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// ErrNoAnswer is Launch's error for a kiln serve that did not answer
// /healthz in time; it still runs and the caller stops it.
var ErrNoAnswer = errors.New("kiln serve did not answer /healthz within 20s")

// ExitedError is Launch's error for a kiln serve that exited before it
// answered; Log is its output.
type ExitedError struct{ Log []byte }

func (e *ExitedError) Error() string { return "kiln serve exited at start" }

// PoolInUse reports a server that refused to start because another kiln
// process holds its build network pool (or the pool overlaps a network
// of the host): another pool may do.
func (e *ExitedError) PoolInUse() bool {
	return bytes.Contains(e.Log, []byte("in use by another kiln process")) || bytes.Contains(e.Log, []byte("choose other --builder-subnets"))
}

// Launch starts cmd (a `kiln serve`) in its own process group with its
// output appended to logPath, and waits until baseURL answers /healthz.
// exited is closed once the process has exited. A server that exits first
// is an *ExitedError; one that does not answer within 20 s is ErrNoAnswer.
// The e2e harness and Kiln.Start both start servers through it.
func Launch(cmd *exec.Cmd, logPath, baseURL string) (exited <-chan struct{}, err error) {
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, err
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(done) }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if res, err := http.Get(baseURL + "/healthz"); err == nil {
			res.Body.Close()
			return done, nil
		}
		select {
		case <-done:
			b, _ := os.ReadFile(logPath)
			return done, &ExitedError{Log: b}
		default:
		}
		if time.Now().After(deadline) {
			return done, ErrNoAnswer
		}
		time.Sleep(50 * time.Millisecond)
	}
}
