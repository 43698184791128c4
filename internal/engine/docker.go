package engine

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/docker/cli/cli/config"
	ctxdocker "github.com/docker/cli/cli/context/docker"
	ctxstore "github.com/docker/cli/cli/context/store"
	"github.com/moby/moby/api/types/jsonstream"
	dockerclient "github.com/moby/moby/client"

	"github.com/kiln-dev/kiln/internal/errdefs"
)

// dockerCheckTimeout bounds the round trip that checks the Docker engine
// answers before a --load build starts.
const dockerCheckTimeout = 15 * time.Second

// dockerEngine is the Docker engine a --load writes to.
type dockerEngine struct {
	api  *dockerclient.Client
	host string // where it was reached, for messages
	// containerdStore is set when the engine keeps images in containerd
	// (Docker's "containerd image store"): it loads OCI archives, index
	// and attestations included, so --load uses the oci exporter as buildx
	// does. The classic store loads only docker-format single images.
	containerdStore bool
}

// connectDocker resolves the Docker engine the way the docker CLI does:
// DOCKER_HOST (with DOCKER_TLS_VERIFY and DOCKER_CERT_PATH) unless a
// context is named; else the context contextName, DOCKER_CONTEXT or the
// Docker config's currentContext; else the default socket. It asks the
// engine for its info, so an unreachable engine is reported (wrapping
// errdefs.ErrUnavailable) before anything is built. purpose names the
// command or flag needing the engine ("--load", "kiln pull") in errors.
func connectDocker(ctx context.Context, contextName, purpose string) (*dockerEngine, error) {
	opts, host, err := dockerClientOpts(contextName, purpose)
	if err != nil {
		return nil, err
	}
	api, err := dockerclient.New(opts...)
	if err != nil {
		return nil, errdefs.InvalidWrapf(err, "%s: Docker engine %s", purpose, host)
	}
	if h := api.DaemonHost(); h != "" {
		host = h
	}
	ctx, cancel := context.WithTimeout(ctx, dockerCheckTimeout)
	defer cancel()
	res, err := api.Info(ctx, dockerclient.InfoOptions{})
	if err != nil {
		_ = api.Close()
		return nil, errdefs.Wrapf(errdefs.ErrUnavailable, err, "%s: cannot reach the Docker engine at %s (set DOCKER_HOST or a Docker context)", purpose, host)
	}
	e := &dockerEngine{api: api, host: host}
	for _, kv := range res.Info.DriverStatus {
		if kv[0] == "driver-type" && kv[1] == "io.containerd.snapshotter.v1" {
			e.containerdStore = true
		}
	}
	return e, nil
}

// dockerClientOpts returns the client options for the engine to load into,
// and its address for messages.
func dockerClientOpts(contextName, purpose string) ([]dockerclient.Opt, string, error) {
	// The client negotiates the API version with the engine by default.
	fromEnv := []dockerclient.Opt{dockerclient.FromEnv}
	if contextName == "" {
		if h := os.Getenv("DOCKER_HOST"); h != "" {
			return fromEnv, h, nil
		}
		contextName = os.Getenv("DOCKER_CONTEXT")
	}
	if contextName == "" {
		contextName = config.LoadDefaultConfigFile(io.Discard).CurrentContext
	}
	if contextName == "" || contextName == "default" {
		return fromEnv, dockerclient.DefaultDockerHost, nil
	}
	st := ctxstore.New(config.ContextStoreDir(), ctxstore.NewConfig(
		func() any { return &map[string]any{} },
		ctxstore.EndpointTypeGetter(ctxdocker.DockerEndpoint, func() any { return &ctxdocker.EndpointMeta{} }),
	))
	meta, err := st.GetMetadata(contextName)
	if err != nil {
		return nil, "", errdefs.InvalidWrapf(err, "%s: Docker context %q", purpose, contextName)
	}
	epMeta, err := ctxdocker.EndpointFromContext(meta)
	if err != nil {
		return nil, "", errdefs.InvalidWrapf(err, "%s: Docker context %q", purpose, contextName)
	}
	ep, err := ctxdocker.WithTLSData(st, contextName, epMeta)
	if err != nil {
		return nil, "", errdefs.InvalidWrapf(err, "%s: Docker context %q", purpose, contextName)
	}
	opts, err := ep.ClientOpts()
	if err != nil {
		return nil, "", errdefs.InvalidWrapf(err, "%s: Docker context %q", purpose, contextName)
	}
	return opts, ep.Host, nil
}

// dockerLoad streams one exporter's archive into the engine's image load
// API through a pipe: nothing is staged on disk. BuildKit writes the
// archive to the pipe while the engine reads it.
type dockerLoad struct {
	engine *dockerEngine
	ctx    context.Context

	mu       sync.Mutex
	pw       *io.PipeWriter // nil until BuildKit opened the output
	done     chan struct{}  // closed when the engine answered (or failed)
	err      error          // the load's error; read after done
	messages []string       // the engine's "Loaded image: …" lines
}

// writer is the exporter's Output: it starts the engine's load with the
// read end of a pipe and hands BuildKit the write end. BuildKit closes it
// when the archive is complete, which ends the engine's request body.
func (l *dockerLoad) writer(map[string]string) (io.WriteCloser, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.pw != nil {
		return nil, errors.New("--load: the exporter opened its output twice")
	}
	pr, pw := io.Pipe()
	l.pw = pw
	go func() {
		err := l.run(pr)
		l.err = err
		close(l.done)
		// If the engine stopped reading early, BuildKit's writes fail
		// with the engine's reason instead of blocking forever. done is
		// closed first so that finish sees this load as the root cause.
		pr.CloseWithError(loadAborted(err))
	}()
	return pw, nil
}

// loadAborted is what a writer sees once the engine stopped reading.
func loadAborted(err error) error {
	if err == nil {
		return errors.New("the Docker engine stopped reading the image archive")
	}
	return err
}

// run posts the archive and reads the engine's answer to the end: a load
// error is reported in the JSON message stream, not in the status code.
func (l *dockerLoad) run(archive io.Reader) error {
	res, err := l.engine.api.ImageLoad(l.ctx, archive, dockerclient.ImageLoadWithQuiet(true))
	if err != nil {
		return errdefs.Wrapf(errdefs.ErrUnavailable, err, "--load: loading the image into the Docker engine at %s", l.engine.host)
	}
	defer res.Close()
	// Engines answer with a JSON message stream; one that answers with
	// plain text has its text kept as the messages. (The client no longer
	// exposes the response's content type, so the first byte tells.)
	body := bufio.NewReader(res)
	if first, err := peekNonSpace(body); err != nil || first != '{' {
		dt, _ := io.ReadAll(io.LimitReader(body, 64<<10))
		if s := strings.TrimSpace(string(dt)); s != "" {
			l.addMessage(s)
		}
		return nil
	}
	dec := json.NewDecoder(body)
	for {
		var m jsonstream.Message
		if err := dec.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("--load: reading the Docker engine's answer: %w", err)
		}
		if m.Error != nil {
			return fmt.Errorf("--load: the Docker engine at %s refused the image: %s", l.engine.host, m.Error.Message)
		}
		if s := strings.TrimSpace(m.Stream); s != "" {
			l.addMessage(s)
		}
	}
}

// peekNonSpace skips leading white space in r and returns, without
// consuming it, the first other byte.
func peekNonSpace(r *bufio.Reader) (byte, error) {
	for {
		b, err := r.Peek(1)
		if err != nil {
			return 0, err
		}
		if !strings.ContainsRune(" \t\r\n", rune(b[0])) {
			return b[0], nil
		}
		_, _ = r.Discard(1)
	}
}

func (l *dockerLoad) addMessage(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range strings.Split(s, "\n") {
		if line = strings.TrimSpace(line); line != "" {
			l.messages = append(l.messages, line)
		}
	}
}

// finish ends the load after the solve returned solveErr and returns the
// error to report. A solve that failed because the engine refused the
// archive reports the engine's reason; any other failed solve aborts the
// engine's request (the engine discards the partial archive) and reports
// solveErr. After a successful solve it waits for the engine to finish
// loading and reports the load's error, if any.
func (l *dockerLoad) finish(solveErr error) error {
	l.mu.Lock()
	pw := l.pw
	l.mu.Unlock()
	if pw == nil {
		if solveErr != nil {
			return solveErr
		}
		return errors.New("--load: the build finished without sending an image to load")
	}
	if solveErr != nil {
		select {
		case <-l.done:
			if l.err != nil {
				return l.err
			}
			return solveErr
		default:
		}
		pw.CloseWithError(solveErr)
		<-l.done // the engine's request fails promptly once its body does
		return solveErr
	}
	// BuildKit closes the pipe once the archive is complete; closing again
	// is harmless and guarantees the engine sees the end.
	_ = pw.Close()
	<-l.done
	return l.err
}

// Messages are the engine's lines, e.g. "Loaded image: app:dev" or, for an
// untagged image, "Loaded image ID: sha256:…".
func (l *dockerLoad) Messages() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.messages...)
}

// CheckDocker connects to the Docker engine a --load writes to and checks
// that it can take the result, so that an unreachable engine (an error
// wrapping errdefs.ErrUnavailable) or an impossible load (ErrInvalid) is
// reported before a build starts. It does nothing for a build that does
// not load; Solve calls it when the caller did not.
func (r *Request) CheckDocker(ctx context.Context) error {
	var load *outputSpec
	for _, o := range r.outputs {
		if o.IsLoad() {
			load = o
		}
	}
	if load == nil || r.docker != nil {
		return nil
	}
	e, err := connectDocker(ctx, load.Attrs["context"], "--load")
	if err != nil {
		return err
	}
	if !e.containerdStore && len(r.attests) > 0 {
		_ = e.api.Close()
		// buildx: "docker exporter does not currently support exporting
		// manifest lists" — attestations need an index.
		return errdefs.Invalidf("%s: the Docker engine at %s keeps images in its classic store, which cannot hold attestations (%s); "+
			"drop them for --load (--provenance=false, --sbom=false), or push / -o type=oci,dest=FILE instead",
			load.flag, e.host, strings.Join(r.attests, ", "))
	}
	r.docker = e
	return nil
}
