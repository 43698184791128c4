package engine

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/containerd/containerd/v2/core/content"
	contentlocal "github.com/containerd/containerd/v2/plugins/content/local"
	"github.com/docker/cli/cli/config"
	"github.com/docker/cli/cli/config/configfile"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/moby/buildkit/client"
	"github.com/moby/buildkit/session"
	"github.com/moby/buildkit/session/auth/authprovider"
	"github.com/moby/buildkit/session/sshforward/sshprovider"
	"github.com/moby/buildkit/util/progress/progressui"
	"github.com/tonistiigi/fsutil"
)

// dockerfileFrontend is the Dockerfile frontend built into buildkitd.
const dockerfileFrontend = "dockerfile.v0"

// Solve runs the build described by r on c with the Dockerfile frontend
// built into buildkitd. The context, Dockerfile directory and local named
// contexts are sent from disk (.dockerignore is applied by the frontend
// during the transfer); secrets, SSH agents (only with --ssh) and registry
// credentials from the user's Docker config are served over the session
// (so the builder pushes and pulls as the user).
//
// With --lint the frontend's checks run first and may refuse the build;
// with --call the frontend method runs instead of the build and the
// response holds its result (print it with [PrintCallResult]). A --load
// output streams the image into the Docker engine while BuildKit exports
// it; Solve returns once the engine has loaded it.
//
// Progress is rendered on progressOut in the request's mode (auto is a tty
// display when progressOut is a terminal, plain otherwise), and every
// status is also passed to observe, when non-nil, before it is displayed.
// On failure the returned error is BuildKit's, e.g.
// `process "/bin/sh -c exit 3" did not complete successfully: exit code: 3`;
// a canceled ctx gives an error wrapping errdefs.ErrCanceled.
func Solve(ctx context.Context, c *client.Client, r *Request, progressOut io.Writer, observe func(*client.SolveStatus)) (*client.SolveResponse, error) {
	if c == nil || r == nil {
		return nil, errors.New("engine.Solve: nil client or request")
	}
	if progressOut == nil {
		progressOut = io.Discard
	}
	if r.call != nil {
		return r.runCall(ctx, c, progressOut, observe)
	}
	if r.lintFailOn != "" {
		if err := r.runLint(ctx, c, progressOut, observe); err != nil {
			return nil, err
		}
	}
	var loads []*dockerLoad
	opt, err := r.solveOptWith(progressOut, func(o *outputSpec) (*dockerLoad, error) {
		if r.docker == nil {
			if err := r.CheckDocker(ctx); err != nil {
				return nil, err
			}
		}
		l := &dockerLoad{engine: r.docker, ctx: ctx, done: make(chan struct{})}
		loads = append(loads, l)
		return l, nil
	})
	if err != nil {
		return nil, err
	}
	resp, err := r.withProgress(ctx, progressOut, observe, func(ch chan *client.SolveStatus) (*client.SolveResponse, error) {
		return c.Solve(ctx, nil, opt, ch)
	})
	for _, l := range loads {
		err = l.finish(err)
		if err == nil && r.progress != progressui.QuietMode && r.progress != progressui.RawJSONMode {
			for _, m := range l.Messages() {
				fmt.Fprintf(progressOut, "%s (Docker engine at %s)\n", m, l.engine.host)
			}
		}
	}
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// withProgress runs one solve (run gets the status channel and must close
// it, as client.Solve and client.Build do) while rendering its progress,
// and prints the frontend's warnings once it ended.
func (r *Request) withProgress(ctx context.Context, progressOut io.Writer, observe func(*client.SolveStatus), run func(chan *client.SolveStatus) (*client.SolveResponse, error)) (*client.SolveResponse, error) {
	display, err := progressui.NewDisplay(progressOut, r.progress)
	if err != nil {
		return nil, errdefs.InvalidWrapf(err, "--progress %q", string(r.progress))
	}
	statusCh := make(chan *client.SolveStatus)
	displayCh := make(chan *client.SolveStatus)
	var (
		resp     *client.SolveResponse
		solveErr error
		solved   = make(chan struct{})
	)
	go func() {
		defer close(solved)
		resp, solveErr = run(statusCh)
	}()
	go func() {
		defer close(displayCh)
		for s := range statusCh {
			if observe != nil {
				observe(s)
			}
			displayCh <- s
		}
	}()
	// The display drains until the status stream ends, even after ctx is
	// canceled, so the failing step is always shown.
	warnings, _ := display.UpdateFrom(context.WithoutCancel(ctx), displayCh)
	<-solved

	if len(warnings) > 0 && r.progress != progressui.QuietMode && r.progress != progressui.RawJSONMode {
		printWarnings(progressOut, warnings)
	}
	if solveErr != nil {
		if ctx.Err() != nil {
			return nil, errdefs.Wrapf(errdefs.ErrCanceled, solveErr, "build canceled")
		}
		return nil, solveErr
	}
	return resp, nil
}

// solveOpt assembles the BuildKit solve options for r: the session
// (context, secrets, SSH, registry credentials), the frontend attributes
// (with attestations), cache imports and exports, and one export entry per
// output, in order. Files an output writes are only created when the
// exporter asks for them. A Docker load output needs [Request.solveOptWith].
func (r *Request) solveOpt(progressOut io.Writer) (client.SolveOpt, error) {
	return r.solveOptWith(progressOut, nil)
}

// solveOptWith is solveOpt; newLoad makes the Docker load a load output
// streams into (nil: a load output is an error).
func (r *Request) solveOptWith(progressOut io.Writer, newLoad func(*outputSpec) (*dockerLoad, error)) (client.SolveOpt, error) {
	opt, err := r.sessionSolveOpt(progressOut)
	if err != nil {
		return client.SolveOpt{}, err
	}
	if opt.Exports, err = r.exportEntries(newLoad); err != nil {
		return client.SolveOpt{}, err
	}
	return opt, nil
}

// sessionSolveOpt is the solve options without exports: the session, the
// frontend attributes and the cache imports and exports.
func (r *Request) sessionSolveOpt(progressOut io.Writer) (client.SolveOpt, error) {
	mounts := make(map[string]fsutil.FS, len(r.locals))
	for name, dir := range r.locals {
		fs, err := fsutil.NewFS(dir)
		if err != nil {
			return client.SolveOpt{}, fmt.Errorf("opening %s for transfer: %w", dir, err)
		}
		mounts[name] = fs
	}

	var ociStores map[string]content.Store
	for id, dir := range r.ociStores {
		store, err := contentlocal.NewStore(dir)
		if err != nil {
			return client.SolveOpt{}, errdefs.InvalidWrapf(err, "--build-context: OCI layout %s", dir)
		}
		if ociStores == nil {
			ociStores = map[string]content.Store{}
		}
		ociStores[id] = store
	}

	secretProvider, err := r.secretProvider()
	if err != nil {
		return client.SolveOpt{}, err
	}
	configWarnings := progressOut
	if r.progress == progressui.QuietMode || r.progress == progressui.RawJSONMode {
		configWarnings = io.Discard
	}
	attachables := []session.Attachable{
		authprovider.NewDockerAuthProvider(authprovider.DockerAuthProviderConfig{
			// --save's credentials over the user's Docker config (save.go);
			// on the server, over nothing (isolate.go).
			AuthConfigProvider: authprovider.LoadAuthConfig(r.dockerConfig(func() *configfile.ConfigFile { return config.LoadDefaultConfigFile(configWarnings) })),
		}),
		secretProvider,
	}
	if len(r.ssh) > 0 {
		sp, err := sshprovider.NewSSHAgentProvider(r.ssh)
		if err != nil {
			return client.SolveOpt{}, errdefs.InvalidWrapf(err, "--ssh")
		}
		attachables = append(attachables, sp)
	}

	return client.SolveOpt{
		Frontend:      dockerfileFrontend,
		FrontendAttrs: maps.Clone(r.frontendAttrs),
		LocalMounts:   mounts,
		OCIStores:     ociStores,
		Session:       attachables,
		CacheImports:  slices.Clone(r.cacheImports),
		CacheExports:  slices.Clone(r.cacheExports),
		SharedKey:     r.sharedKey(),
	}, nil
}

// sharedKey names the build's local files to the builder, which keeps the
// last transfer under each key and sends only the files whose size or
// modification time changed since. Two sources that may hold different
// files of equal size and time must not share a key, or the second is
// built with the first's files: two checkouts, two uploads of a tarball
// made with fixed times (SOURCE_DATE_EPOCH). BuildKit's default key is
// empty, one for every client of a builder; this one is the machine's and
// the directories', so a source build (its own extraction directory) never
// shares one, and a rebuild of one checkout still sends only what changed.
func (r *Request) sharedKey() string {
	host, _ := os.Hostname()
	h := sha256.New()
	io.WriteString(h, host)
	for _, name := range slices.Sorted(maps.Keys(r.locals)) {
		fmt.Fprintf(h, "\x00%s\x00%s", name, r.locals[name])
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// exportEntries turns the outputs into BuildKit export entries.
func (r *Request) exportEntries(newLoad func(*outputSpec) (*dockerLoad, error)) ([]client.ExportEntry, error) {
	var exports []client.ExportEntry
	for _, out := range r.outputs {
		entry := client.ExportEntry{Type: out.Type, Attrs: maps.Clone(out.Attrs)}
		switch {
		case out.IsLoad():
			if newLoad == nil {
				return nil, errors.New("engine: a --load output needs a Docker engine (internal error)")
			}
			l, err := newLoad(out)
			if err != nil {
				return nil, err
			}
			delete(entry.Attrs, "context") // the Docker context, read by CheckDocker
			if l.engine.containerdStore {
				// The containerd image store loads OCI archives, index
				// and attestations included (buildx does the same).
				entry.Type = client.ExporterOCI
			}
			entry.Output = l.writer
		case out.IsDir():
			if err := os.MkdirAll(out.Dest, 0o755); err != nil {
				return nil, fmt.Errorf("%s: creating %s: %w", out.flag, out.Dest, err)
			}
			entry.OutputDir = out.Dest
		case out.Dest != "":
			dest, stdout := out.Dest, r.stdout
			entry.Output = func(map[string]string) (io.WriteCloser, error) {
				if dest == "-" {
					return nopWriteCloser{stdout}, nil
				}
				if err := os.MkdirAll(filepath.Dir(dest), 0o755); err != nil {
					return nil, err
				}
				return os.Create(dest)
			}
		}
		exports = append(exports, entry)
	}
	return exports, nil
}

type nopWriteCloser struct{ io.Writer }

func (nopWriteCloser) Close() error { return nil }

func printWarnings(w io.Writer, warnings []client.VertexWarning) {
	noun := "warnings"
	if len(warnings) == 1 {
		noun = "warning"
	}
	fmt.Fprintf(w, "\n%d %s found:\n", len(warnings), noun)
	for _, wn := range warnings {
		line := ""
		if len(wn.Range) > 0 && wn.Range[0] != nil && wn.Range[0].Start != nil {
			line = fmt.Sprintf(" (line %d)", wn.Range[0].Start.Line)
		}
		if strings.HasSuffix(string(wn.Short), line) {
			line = "" // the frontend's checks name the line themselves
		}
		fmt.Fprintf(w, " - %s%s\n", wn.Short, line)
	}
}
