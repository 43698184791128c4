package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"

	"github.com/containerd/containerd/v2/core/content"
	contentlocal "github.com/containerd/containerd/v2/plugins/content/local"
	"github.com/docker/cli/cli/config"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/moby/buildkit/client"
	"github.com/moby/buildkit/session"
	"github.com/moby/buildkit/session/auth/authprovider"
	"github.com/moby/buildkit/session/secrets/secretsprovider"
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
// credentials from the user's Docker config are served over the session.
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
	display, err := progressui.NewDisplay(progressOut, r.progress)
	if err != nil {
		return nil, invalidWrap(err, "--progress %q", string(r.progress))
	}
	opt, err := r.solveOpt(progressOut)
	if err != nil {
		return nil, err
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
		// client.Solve closes statusCh when it returns.
		resp, solveErr = c.Solve(ctx, nil, opt, statusCh)
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
			return nil, kindWrap(errdefs.ErrCanceled, solveErr, "build canceled")
		}
		return nil, solveErr
	}
	return resp, nil
}

// solveOpt assembles the BuildKit solve options for r. Files an output
// writes are only created when the exporter asks for them.
func (r *Request) solveOpt(progressOut io.Writer) (client.SolveOpt, error) {
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
			return client.SolveOpt{}, invalidWrap(err, "--build-context: OCI layout %s", dir)
		}
		if ociStores == nil {
			ociStores = map[string]content.Store{}
		}
		ociStores[id] = store
	}

	secretStore, err := secretsprovider.NewStore(r.secrets)
	if err != nil {
		return client.SolveOpt{}, invalidWrap(err, "--secret")
	}
	configWarnings := progressOut
	if r.progress == progressui.QuietMode || r.progress == progressui.RawJSONMode {
		configWarnings = io.Discard
	}
	attachables := []session.Attachable{
		authprovider.NewDockerAuthProvider(authprovider.DockerAuthProviderConfig{
			ConfigFile: config.LoadDefaultConfigFile(configWarnings),
		}),
		secretsprovider.NewSecretProvider(secretStore),
	}
	if len(r.ssh) > 0 {
		sp, err := sshprovider.NewSSHAgentProvider(r.ssh)
		if err != nil {
			return client.SolveOpt{}, invalidWrap(err, "--ssh")
		}
		attachables = append(attachables, sp)
	}

	var exports []client.ExportEntry
	if out := r.output; out != nil {
		entry := client.ExportEntry{Type: out.typ, Attrs: maps.Clone(out.attrs)}
		if out.typ == client.ExporterLocal {
			if err := os.MkdirAll(out.dest, 0o755); err != nil {
				return client.SolveOpt{}, fmt.Errorf("-o: creating %s: %w", out.dest, err)
			}
			entry.OutputDir = out.dest
		} else {
			dest, stdout := out.dest, r.stdout
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

	return client.SolveOpt{
		Frontend:      dockerfileFrontend,
		FrontendAttrs: maps.Clone(r.frontendAttrs),
		LocalMounts:   mounts,
		OCIStores:     ociStores,
		Session:       attachables,
		Exports:       exports,
	}, nil
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
		fmt.Fprintf(w, " - %s%s\n", wn.Short, line)
	}
}
