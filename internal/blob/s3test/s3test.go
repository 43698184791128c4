// Package s3test runs a real S3 server for tests: versitygw (built into
// bin/versitygw by hack/setup.sh) with its posix backend in a temp
// directory, on a loopback port. Unlike an in-memory fake, it checks SigV4
// signatures, expiry and signed headers, so presigned-URL tests mean
// something. Unit tests of internal/blob and the e2e harness share it.
//
// A missing binary fails the test, unless KILN_SKIP_MISSING=1 (then it is
// skipped). $KILN_VERSITYGW names another binary.
package s3test

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/testenv"
)

// Server is one running versitygw.
type Server struct {
	// Endpoint is "http://127.0.0.1:<port>".
	Endpoint string
	// LocalhostEndpoint is the same server as "http://localhost:<port>": a
	// second host name for tests that a URL signed for one host fails at
	// another (use it as the public endpoint).
	LocalhostEndpoint string
	AccessKey         string
	SecretKey         string
	Region            string
	// Bucket exists and is empty when Start returns.
	Bucket string
	// Root is the posix backend's directory: object K of bucket B is the
	// file Root/B/K.
	Root string

	cmd    *exec.Cmd
	exited chan struct{}
	log    string
	stop   sync.Once
}

const stopGrace = 10 * time.Second

// Start runs versitygw for the test and stops it when the test ends,
// printing its log if the test failed.
func Start(t testing.TB) *Server {
	t.Helper()
	s, err := launch(binary(t), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.Stop()
		if t.Failed() {
			t.Logf("versitygw (%s) log:\n%s", strings.Join(s.cmd.Args, " "), s.Log())
		}
	})
	return s
}

// launch starts versitygw from bin with its bucket root and log in dir,
// and waits until it answers; on an error nothing of it runs.
func launch(bin, dir string) (*Server, error) {
	s := &Server{
		AccessKey: "kiln-test",
		SecretKey: randomHex(20),
		Region:    "us-east-1",
		Bucket:    "kiln-test",
		Root:      filepath.Join(dir, "root"),
		log:       filepath.Join(dir, "versitygw.log"),
	}
	// A bucket of the posix backend is a directory under its root.
	if err := os.MkdirAll(filepath.Join(s.Root, s.Bucket), 0o700); err != nil {
		return nil, err
	}
	logf, err := os.Create(s.log)
	if err != nil {
		return nil, err
	}
	addr, err := freeAddr()
	if err != nil {
		logf.Close()
		return nil, err
	}
	_, port, _ := net.SplitHostPort(addr)
	s.Endpoint = "http://" + addr
	s.LocalhostEndpoint = "http://localhost:" + port
	s.cmd = exec.Command(bin,
		"--access", s.AccessKey, "--secret", s.SecretKey, "--region", s.Region,
		"--port", addr, "posix", s.Root)
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	if err := s.cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	s.exited = make(chan struct{})
	go func() { s.cmd.Wait(); logf.Close(); close(s.exited) }()
	if err := s.waitReady(30 * time.Second); err != nil {
		return nil, fmt.Errorf("versitygw on %s: %w\n%s", addr, err, s.Log())
	}
	return s, nil
}

// Stop ends versitygw (SIGTERM, then SIGKILL after a grace period) and
// waits for it. Tests call it to make S3 unavailable; calling it again
// does nothing.
func (s *Server) Stop() {
	s.stop.Do(func() {
		s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.exited:
		case <-time.After(stopGrace):
			s.cmd.Process.Kill()
			<-s.exited
		}
	})
}

// Log is what versitygw printed so far.
func (s *Server) Log() string {
	b, _ := os.ReadFile(s.log)
	const max = 16 << 10
	if len(b) > max {
		b = append([]byte("...\n"), b[len(b)-max:]...)
	}
	return string(b)
}

// waitReady polls until the server answers HTTP (an anonymous request gets
// a 403, which is an answer) or exits.
func (s *Server) waitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	client := &http.Client{Timeout: time.Second}
	for {
		res, err := client.Get(s.Endpoint + "/")
		if err == nil {
			res.Body.Close()
			return nil
		}
		select {
		case <-s.exited:
			return fmt.Errorf("versitygw exited before it answered: %v", s.cmd.ProcessState)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.Stop()
			return fmt.Errorf("no answer within %v: %v", timeout, err)
		}
	}
}

// binary finds versitygw: $KILN_VERSITYGW, else bin/versitygw at the root
// of kiln's repository.
func binary(t testing.TB) string {
	t.Helper()
	if bin := os.Getenv("KILN_VERSITYGW"); bin != "" {
		return bin
	}
	return testenv.Bin(t, "versitygw")
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
