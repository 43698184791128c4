package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"strings"
	"sync"

	"github.com/moby/buildkit/client"
	digest "github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"

	"github.com/kiln-dev/kiln/internal/platform"
)

// Target is one platform of a multi-platform build and the builder that
// builds it. Several targets may share one client (--build-platform forces
// one builder; BuildKit builds the foreign platforms under emulation).
type Target struct {
	// Platform is a target platform from [Request.Platforms].
	Platform platform.Platform
	// Client is connected to the builder; SolveMulti does not close it.
	Client *client.Client
}

// SolveMulti builds r once per target, all in parallel, each solve with
// the Dockerfile frontend's "platform" set to its target, and merges the
// results into r's output the way buildx does for a multi-platform build:
//
//   - type=oci: one OCI layout whose image index lists every platform's
//     manifest (and the attestation manifests BuildKit attached to them);
//   - type=image with push=true (--push, type=registry): each builder pushes
//     its platform by digest, then the client pushes an index of them under
//     every tag, with the user's Docker credentials;
//   - type=local: one subdirectory per platform (dest/linux_amd64/…);
//   - type=tar: one archive with a top directory per platform.
//
// Progress of all solves is rendered on progressOut as one display whose
// step names carry the platform ("[linux/arm64 build 2/3] RUN …"); observe,
// when non-nil, sees the same renamed statuses. If one platform fails the
// others are canceled and the error names the platform. The returned
// response's ExporterResponse describes the merged result
// (containerimage.digest is the index digest) for --iidfile and
// --metadata-file.
func SolveMulti(ctx context.Context, targets []Target, r *Request, progressOut io.Writer, observe func(*client.SolveStatus)) (*client.SolveResponse, error) {
	if r == nil || len(targets) == 0 {
		return nil, errors.New("engine.SolveMulti: no request or no targets")
	}
	seen := map[platform.Platform]bool{}
	for _, t := range targets {
		if t.Client == nil || t.Platform.IsZero() || seen[t.Platform] {
			return nil, fmt.Errorf("engine.SolveMulti: target %q: missing client or platform, or given twice", t.Platform)
		}
		seen[t.Platform] = true
	}
	if progressOut == nil {
		progressOut = io.Discard
	}
	// --call and --lint ask the frontend about the Dockerfile, which does
	// not depend on the platform: once, on the first builder.
	if r.call != nil {
		return r.runCall(ctx, targets[0].Client, progressOut, observe)
	}
	if r.lintFailOn != "" {
		if err := r.runLint(ctx, targets[0].Client, progressOut, observe); err != nil {
			return nil, err
		}
	}
	tmp, err := r.tempDir()
	if err != nil {
		return nil, err
	}
	work, err := os.MkdirTemp(tmp, "multi-")
	if err != nil {
		return nil, fmt.Errorf("creating temp dir: %w", err)
	}
	defer os.RemoveAll(work)

	// One SolveOpt per target from the code the single-platform solve uses
	// (session, cache, attestations, exports), then the target platform
	// and that platform's share of the exports.
	plans := make([]*platformPlan, len(targets))
	opts := make([]client.SolveOpt, len(targets))
	var userExports []client.ExportEntry
	for i, t := range targets {
		opt, err := r.solveOpt(progressOut)
		if err != nil {
			return nil, err
		}
		if i == 0 {
			userExports = opt.Exports
		}
		opt.FrontendAttrs = maps.Clone(opt.FrontendAttrs)
		if opt.FrontendAttrs == nil {
			opt.FrontendAttrs = map[string]string{}
		}
		opt.FrontendAttrs["platform"] = t.Platform.String()
		plans[i], err = planPlatformExports(work, i, t.Platform.String(), opt.Exports)
		if err != nil {
			return nil, err
		}
		opt.Exports = plans[i].exports
		opts[i] = opt
	}

	responses := make([]*client.SolveResponse, len(targets))
	_, err = r.withProgress(ctx, progressOut, observe, func(merged chan *client.SolveStatus) (*client.SolveResponse, error) {
		// Each solve has its own status channel, which it closes; a
		// forwarder per solve renames its statuses into merged, and merged
		// is closed once every solve and forwarder is done. The first
		// failure cancels the other solves.
		var forwarders sync.WaitGroup
		g, gctx := errgroup.WithContext(ctx)
		for i, t := range targets {
			ch := make(chan *client.SolveStatus)
			forwarders.Add(1)
			go func() {
				defer forwarders.Done()
				for s := range ch {
					merged <- platformStatus(t.Platform.String(), s)
				}
			}()
			g.Go(func() error {
				resp, err := t.Client.Solve(gctx, nil, opts[i], ch)
				if err != nil {
					return &platformError{platform: t.Platform.String(), err: err}
				}
				responses[i] = resp
				return nil
			})
		}
		err := g.Wait()
		forwarders.Wait()
		close(merged)
		return nil, err
	})
	if err != nil {
		return nil, err
	}
	return finishPlatformExports(ctx, r.keychain(), userExports, plans, responses)
}

// platformError names the platform whose solve failed. It unwraps to
// BuildKit's error so gRPC status codes (Canceled …) still reach callers.
type platformError struct {
	platform string
	err      error
}

func (e *platformError) Error() string { return e.platform + ": " + e.err.Error() }
func (e *platformError) Unwrap() error { return e.err }

// platformStatus returns s as it belongs in a display shared by several
// platforms: vertex names carry the platform and digests are made distinct
// per platform (two builders — or one builder building two platforms —
// report the same digest for the same platform-independent step, such as
// loading the Dockerfile, and the display would merge them).
func platformStatus(platform string, s *client.SolveStatus) *client.SolveStatus {
	if s == nil {
		return nil
	}
	remap := func(d digest.Digest) digest.Digest {
		if d == "" {
			return d
		}
		return digest.FromString(platform + "\x00" + d.String())
	}
	out := &client.SolveStatus{}
	for _, v := range s.Vertexes {
		if v == nil {
			continue
		}
		c := *v
		c.Digest = remap(v.Digest)
		c.Inputs = make([]digest.Digest, len(v.Inputs))
		for i, in := range v.Inputs {
			c.Inputs[i] = remap(in)
		}
		c.Name = PlatformVertexName(platform, v.Name)
		out.Vertexes = append(out.Vertexes, &c)
	}
	for _, st := range s.Statuses {
		if st == nil {
			continue
		}
		c := *st
		c.Vertex = remap(st.Vertex)
		out.Statuses = append(out.Statuses, &c)
	}
	for _, l := range s.Logs {
		if l == nil {
			continue
		}
		c := *l
		c.Vertex = remap(l.Vertex)
		out.Logs = append(out.Logs, &c)
	}
	for _, w := range s.Warnings {
		if w == nil {
			continue
		}
		c := *w
		c.Vertex = remap(w.Vertex)
		out.Warnings = append(out.Warnings, &c)
	}
	return out
}

// PlatformVertexName puts the platform into a step name the way the
// Dockerfile frontend does in a multi-platform build: "[build 2/3] RUN x"
// becomes "[linux/arm64 build 2/3] RUN x"; a name without a bracketed
// prefix ("exporting to image") gets one.
func PlatformVertexName(platform, name string) string {
	if rest, ok := strings.CutPrefix(name, "["); ok && strings.Contains(rest, "]") {
		return "[" + platform + " " + rest
	}
	return "[" + platform + "] " + name
}
