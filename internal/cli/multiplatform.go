package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	cliv1 "github.com/depot/depot-go/proto/depot/cli/v1"
	bkclient "github.com/moby/buildkit/client"
	"golang.org/x/sync/errgroup"

	"github.com/kiln-dev/kiln/internal/engine"
)

// builderPlatform is the GetBuildKitConnection platform of a builder
// ("linux/amd64" or "linux/arm64", see engine.Request.BuilderPlatform).
func builderPlatform(p string) cliv1.BuilderPlatform {
	if p == engine.BuilderARM64 {
		return cliv1.BuilderPlatform_BUILDER_PLATFORM_ARM64
	}
	return cliv1.BuilderPlatform_BUILDER_PLATFORM_AMD64
}

// runMultiPlatform is run for a build with several --platform values: one
// kiln build (one CreateBuild, one FinishBuild) that takes a builder per
// platform it needs — both of the project's builders in parallel, or the
// one --build-platform names — and solves every platform at once with
// engine.SolveMulti, which merges the results into one image index.
//
// Steps of all platforms are reported to the server under their
// platform-prefixed names. Health is reported for the build as a whole; the
// server releases every builder the build holds when it finishes.
func (b *remoteBuild) runMultiPlatform(ctx context.Context, req *engine.Request, bf *buildFlags, stderr io.Writer) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go b.reportHealth(ctx, cancel)

	builders := req.BuilderPlatforms()
	clients := make(map[string]*bkclient.Client, len(builders))
	conns := make([]*bkclient.Client, len(builders))
	g, gctx := errgroup.WithContext(ctx)
	for i, p := range builders {
		g.Go(func() error {
			// A copy of b asks for this platform's builder; dial and connect
			// only read b.
			pb := *b
			pb.platform = builderPlatform(p)
			c, err := pb.dial(gctx, bf.wait, stderr)
			if err != nil {
				return fmt.Errorf("%s builder: %w", p, err)
			}
			conns[i] = c
			return nil
		})
	}
	err := g.Wait()
	for i, c := range conns {
		if c != nil {
			defer c.Close()
			clients[builders[i]] = c
		}
	}
	if err != nil {
		if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
			return cause
		}
		return err
	}

	var targets []engine.Target
	var plan []string
	for _, p := range req.Platforms() {
		bp := req.BuilderPlatform(p)
		targets = append(targets, engine.Target{Platform: p, Client: clients[bp]})
		plan = append(plan, p+" on the "+bp+" builder")
	}
	fmt.Fprintf(stderr, "kiln: building %s\n", strings.Join(plan, ", "))

	return b.solve(ctx, func(observe func(*bkclient.SolveStatus)) (*bkclient.SolveResponse, error) {
		return engine.SolveMulti(ctx, targets, req, stderr, observe)
	})
}
