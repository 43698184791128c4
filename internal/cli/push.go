package cli

import (
	"context"
	"fmt"
	"io"
	"time"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"

	cliv1extra "github.com/kiln-dev/kiln/gen/depot/cli/v1"
	"github.com/kiln-dev/kiln/internal/client"
	"github.com/kiln-dev/kiln/internal/engine"
)

func newPushCmd(g *globals) *cobra.Command {
	var dests []string
	var project string
	var insecure bool
	cmd := &cobra.Command{
		Use:   "push BUILD_ID | PROJECT:TAG | :TAG -t REGISTRY/REPO:TAG...",
		Short: "Copy a saved build from kiln's registry to another registry",
		Long: `Copy an image that 'kiln build --save' saved to kiln's registry to another
registry, registry to registry: layers stream from kiln to the destination
without a local copy, and the manifests are copied byte for byte, so a
multi-platform index keeps its digest, every platform and its attestations.

The destination is reached with your Docker credentials (~/.docker/config.json,
credential helpers: 'docker login' first); registries on loopback speak plain
HTTP, --insecure allows it anywhere. The source is read with a short-lived pull
token from the server.`,
		Example: `  kiln push 8c3d0a1f2b4e -t registry.example.com/app:1.2
  kiln push 8c3d0a1f2b4e -t registry.example.com/app:1.2 -t registry.example.com/app:latest
  kiln push 1kq2w3e4r5t6:v1 -t 127.0.0.1:5000/app:v1
  kiln push :v1 -t registry.internal:5000/app:v1 --insecure --project 1kq2w3e4r5t6`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runPush(cmd.Context(), g, args[0], dests, insecure, project, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.StringArrayVarP(&dests, "tag", "t", nil, "destination REGISTRY/REPO[:TAG] (repeatable; required)")
	f.BoolVar(&insecure, "insecure", false, "reach the destination registries over plain HTTP")
	f.StringVar(&project, "project", "", "project of a tag (env KILN_PROJECT_ID, DEPOT_PROJECT_ID, or kiln.json)")
	return cmd
}

func runPush(ctx context.Context, g *globals, arg string, dests []string, insecure bool, project string, stdout, stderr io.Writer) error {
	sa, err := client.ParseSavedArg(arg)
	if err != nil {
		return fmt.Errorf("kiln push: %w", err)
	}
	if err := engine.CheckCopyDests(dests, insecure); err != nil {
		return err
	}
	cfg, err := g.config()
	if err != nil {
		return err
	}
	img, digest, err := findSaved(ctx, cfg, sa, project)
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "kiln: pushing %s (%s, %s)\n", img.Ref, img.What, digest)
	pushes := startPushes(ctx, cfg, img.BuildID, dests, stderr)
	got, err := engine.CopyImage(ctx, engine.CopyOptions{Source: img.Ref, SourceAuth: savedAuth(img), Dests: dests,
		Insecure: insecure, Progress: stderr})
	finishPushes(cfg, img.BuildID, pushes, err)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, got)
	return nil
}

// startPushes tells the server (depot.cli.v1.PushService) that a saved
// build is being pushed to dests, so the build's steps record it. It is
// best effort: a server that does not record pushes, or refuses, does not
// stop the copy. Pushes of a tag (no build id) are not recorded.
func startPushes(ctx context.Context, cfg client.Config, buildID string, dests []string, stderr io.Writer) []string {
	if buildID == "" {
		return nil
	}
	api := cfg.Pushes()
	var ids []string
	for _, d := range dests {
		res, err := api.StartPush(ctx, connect.NewRequest(&cliv1extra.StartPushRequest{BuildId: buildID, Tag: d}))
		if err != nil {
			if connect.CodeOf(err) != connect.CodeUnimplemented {
				fmt.Fprintf(stderr, "kiln: warning: the server did not record the push to %s: %s\n", d, describe(err))
			}
			return nil
		}
		ids = append(ids, res.Msg.PushId)
	}
	return ids
}

func finishPushes(cfg client.Config, buildID string, ids []string, pushErr error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var msg *string
	if pushErr != nil {
		m := pushErr.Error()
		msg = &m
	}
	api := cfg.Pushes()
	for _, id := range ids {
		_, _ = api.FinishPush(ctx, connect.NewRequest(&cliv1extra.FinishPushRequest{BuildId: buildID, PushId: id, Error: msg}))
	}
}
