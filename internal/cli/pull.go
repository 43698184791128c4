package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/spf13/cobra"

	"github.com/kiln-dev/kiln/internal/client"
	"github.com/kiln-dev/kiln/internal/engine"
	"github.com/kiln-dev/kiln/internal/errdefs"
	kilnplatform "github.com/kiln-dev/kiln/internal/platform"
)

func newPullCmd(g *globals) *cobra.Command {
	var names []string
	var platform, project string
	cmd := &cobra.Command{
		Use:   "pull BUILD_ID | PROJECT:TAG | :TAG",
		Short: "Pull a saved build from kiln's registry into the local Docker engine",
		Long: `Pull an image that 'kiln build --save' saved to kiln's registry into the Docker
engine at DOCKER_HOST (or the current Docker context), and tag it.

The image is named by its build id, by PROJECT:TAG for a --save-tag, or by :TAG
(or a bare tag) in the current project (--project, KILN_PROJECT_ID, kiln.json).
kiln asks the server for a short-lived pull token and hands it to the engine
for this pull only; nothing is written to your Docker config.`,
		Example: `  kiln pull 8c3d0a1f2b4e -t app:dev
  kiln pull 8c3d0a1f2b4e -t app:dev --platform linux/arm64
  kiln pull 1kq2w3e4r5t6:v1 -t app:v1
  kiln pull :v1 -t app:v1 --project 1kq2w3e4r5t6`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runPull(cmd.Context(), g, args[0], names, platform, project, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.StringArrayVarP(&names, "tag", "t", nil, "name to give the pulled image (repeatable; default: the registry reference)")
	f.StringVar(&platform, "platform", "", "pull this platform of a multi-platform image, e.g. linux/arm64 (default: the engine's)")
	f.StringVar(&project, "project", "", "project of a tag (env KILN_PROJECT_ID, DEPOT_PROJECT_ID, or kiln.json)")
	return cmd
}

func runPull(ctx context.Context, g *globals, arg string, names []string, platform, project string, stdout, stderr io.Writer) error {
	sa, err := client.ParseSavedArg(arg)
	if err != nil {
		return fmt.Errorf("kiln pull: %w", err)
	}
	if err := engine.CheckImageNames("-t", names); err != nil {
		return err
	}
	var pl kilnplatform.Platform
	if platform != "" {
		if pl, err = kilnplatform.Parse(platform); err != nil {
			return fmt.Errorf("--platform: %w", err)
		}
	}
	cfg, err := g.config()
	if err != nil {
		return err
	}
	img, digest, err := findSaved(ctx, cfg, sa, project)
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "kiln: pulling %s (%s, %s)\n", img.Ref, img.What, digest)
	id, err := engine.PullIntoDocker(ctx, engine.PullOptions{Ref: img.Ref, Username: img.Username, Password: img.Password,
		Platform: pl, Names: names, Progress: stderr})
	if err != nil {
		return err
	}
	as := img.Ref
	if len(names) > 0 {
		as = strings.Join(names, ", ")
	}
	fmt.Fprintf(stderr, "kiln: pulled %s into Docker as %s\n", img.What, as)
	fmt.Fprintln(stdout, id)
	return nil
}

// findSaved resolves a `kiln pull` / `kiln push` argument to its image in
// kiln's registry and checks (one HEAD of the manifest) that it is there
// and the credentials read it, so the user learns why not before Docker or
// a destination registry is involved.
func findSaved(ctx context.Context, cfg client.Config, sa client.SavedArg, projectFlag string) (client.SavedImage, string, error) {
	img, err := cfg.ResolveSaved(ctx, sa, func() (string, error) { return client.FindProject(projectFlag, ".") })
	if err != nil {
		return client.SavedImage{}, "", err
	}
	digest, err := engine.ImageDigest(ctx, img.Ref, savedAuth(img))
	switch {
	case err == nil:
		return img, digest, nil
	case errdefs.IsNotFound(err):
		return img, "", errors.New(img.NotSaved())
	case errors.Is(err, errdefs.ErrUnauthenticated), errors.Is(err, errdefs.ErrPermission):
		return img, "", fmt.Errorf("kiln's registry refused the pull token for %s: %w", img.What, err)
	case errdefs.IsUnavailable(err):
		return img, "", fmt.Errorf("cannot reach kiln's registry for %s: %w", img.What, err)
	}
	return img, "", err
}

func savedAuth(img client.SavedImage) authn.Authenticator {
	return &authn.Basic{Username: img.Username, Password: img.Password}
}
