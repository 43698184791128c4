package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"time"

	cliv1 "github.com/depot/depot-go/proto/depot/cli/v1"
	"github.com/spf13/cobra"

	"github.com/kiln-dev/kiln/internal/buildreq"
	"github.com/kiln-dev/kiln/internal/client"
	"github.com/kiln-dev/kiln/internal/engine"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/session"
)

type buildFlags struct {
	opts     buildreq.Flags
	progress string // --progress
	project  string
	iidfile  string
	metadata string
	wait     time.Duration
	check    bool     // --check: --call=check
	save     bool     // --save: push to kiln's registry (save.go)
	saveTags []string // --save-tag (implies --save)
	detach   bool     // --detach: upload the context, queue a server build (detach.go)
	customer string   // --customer: with --detach, the platform customer's project
}

func newBuildCmd(g *globals) *cobra.Command {
	var bf buildFlags
	cmd := &cobra.Command{
		Use:   "build [OPTIONS] PATH | URL | -",
		Short: "Build a Dockerfile context on the project's kiln builder",
		Long: `Build a Dockerfile on the project's remote BuildKit builder, like 'docker buildx build'.
The context is sent incrementally (.dockerignore honoured) and the layer cache
persists in the project, so rebuilds are fast on any machine.

PATH is a directory, or - to read a tar archive (or a lone Dockerfile) from stdin.
URL is a git repository the builder fetches itself (nothing is uploaded):
https://host/org/repo.git#ref:subdir, ref a branch, tag or commit; a private
repository's token is the secret GIT_AUTH_TOKEN (docs/git-contexts.md).

With --detach, the context is packed and uploaded, and kiln runs the build
itself and pushes the image to its registry; the command prints the build id
and returns at once (see 'kiln builds').`,
		Example: `  kiln build -t app:dev --load .
  kiln build -t registry.example.com/app:1.2 --push --cache-to type=registry,ref=registry.example.com/app:cache,mode=max .
  kiln build -t app -o type=image,name=127.0.0.1:5000/app,push=true,compression=zstd,oci-mediatypes=true .
  kiln build -o type=oci,dest=out.tar --provenance=mode=max --metadata-file meta.json .
  kiln build --platform linux/amd64,linux/arm64 -t registry.example.com/app:1.2 --push .
  kiln build --save --save-tag v1 .            # then: kiln pull <build id> -t app:v1
  kiln build --lint -t app --load .
  kiln build --call=check .
  kiln build -t app:dev --target runtime --build-arg VERSION=1.2 -o type=docker,dest=app.tar .
  kiln build --secret id=npm,src=$HOME/.npmrc -o type=local,dest=out/ .
  kiln build -t app --push https://github.com/acme/app.git#v1.2:services/web
  GIT_TOKEN=… kiln build --secret id=GIT_AUTH_TOKEN,env=GIT_TOKEN https://git.example.com/acme/private.git#main
  tar -c . | kiln build -o type=tar,dest=- - > rootfs.tar
  id=$(kiln build --detach -t v1 .) && kiln builds logs -f "$id"
  kiln build --detach --customer acme-42 --platform linux/amd64,linux/arm64 .`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			bf.opts.ContextPath = args[0]
			bf.opts.Stdin = cmd.InOrStdin()
			bf.opts.Stdout = cmd.OutOrStdout()
			if bf.detach || cmd.Flags().Changed("customer") {
				return runDetach(cmd.Context(), g, &bf, cmd.Flags(), cmd.OutOrStdout(), cmd.ErrOrStderr())
			}
			return runBuild(cmd.Context(), g, &bf, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	o := &bf.opts
	f.StringVarP(&o.Dockerfile, "file", "f", "", "Dockerfile path (default PATH/Dockerfile)")
	f.StringArrayVarP(&o.Tags, "tag", "t", nil, "image name and tag (repeatable)")
	f.StringVar(&o.Target, "target", "", "build stage to build")
	f.StringArrayVar(&o.BuildArgs, "build-arg", nil, "build-time variable KEY=VALUE (repeatable)")
	f.StringArrayVar(&o.Labels, "label", nil, "image label KEY=VALUE (repeatable)")
	f.StringArrayVar(&o.Secrets, "secret", nil, "secret to expose: id=ID,src=PATH | id=ID,env=VAR (repeatable)")
	f.StringArrayVar(&o.SSH, "ssh", nil, "SSH agent socket or keys: default | ID=PATH (repeatable)")
	f.BoolVar(&o.NoCache, "no-cache", false, "do not use the cache")
	f.StringArrayVar(&o.NoCacheFilter, "no-cache-filter", nil, "do not cache these stages")
	f.StringArrayVar(&o.BuildContexts, "build-context", nil, "additional context NAME=PATH|docker-image://REF (repeatable)")
	f.StringVar(&o.Network, "network", "default", "network for RUN: default | none")
	f.StringVar(&o.Platform, "platform", "", "target platform(s), e.g. linux/amd64 or linux/amd64,linux/arm64 (one image index)")
	f.StringVar(&o.BuildPlatform, "build-platform", buildreq.BuildPlatformDynamic, "builder to run on: dynamic (each platform on its own architecture's builder) | linux/amd64 | linux/arm64")
	f.StringArrayVarP(&o.Outputs, "output", "o", nil, "output (repeatable): type=local|tar|oci|docker,dest=PATH | type=docker (load) | type=image|registry,name=REF[,push=true][,compression=gzip|zstd|estargz]")
	f.BoolVar(&o.Push, "push", false, `push the image to the -t names (shorthand for "--output=type=registry")`)
	f.BoolVar(&o.Load, "load", false, `load the image into the Docker engine at DOCKER_HOST (shorthand for "--output=type=docker")`)
	f.StringVar(&o.Provenance, "provenance", "", `provenance attestation: true | false | min | max | mode=min|max,... (default: min, attached to pushed images)`)
	f.StringVar(&o.SBOM, "sbom", "", `SBOM attestation: true | false | generator=IMAGE (the scanner image is pulled by the builder)`)
	f.StringArrayVar(&o.Attests, "attest", nil, "attestation: type=provenance|sbom[,disabled=true][,KEY=VALUE] (repeatable)")
	f.StringArrayVar(&o.CacheFrom, "cache-from", nil, "import cache: type=registry,ref=REF | REF (gha and local are ignored: the project cache is persistent)")
	f.StringArrayVar(&o.CacheTo, "cache-to", nil, "export cache: type=registry,ref=REF[,mode=min|max] | type=inline")
	f.StringVar(&o.Call, "call", "build", "method to run: build | check | outline | targets [,format=json]")
	f.BoolVar(&bf.check, "check", false, `shorthand for "--call=check"`)
	f.BoolVar(&o.Lint, "lint", false, "run the Dockerfile checks before building; violations print with file:line")
	f.StringVar(&o.LintFailOn, "lint-fail-on", "error", "with --lint, fail the build on: error | warn | none")
	f.StringVar(&bf.progress, "progress", "auto", "progress output: auto | plain | tty | quiet | rawjson")
	f.BoolVar(&bf.save, "save", false, "save the image to kiln's registry as <project>:<build id> (then: kiln pull, kiln push)")
	f.StringArrayVar(&bf.saveTags, "save-tag", nil, "also save the image as <project>:TAG (repeatable; implies --save)")
	f.StringVar(&bf.project, "project", "", "project id (env KILN_PROJECT_ID, DEPOT_PROJECT_ID, or kiln.json)")
	f.StringVar(&bf.iidfile, "iidfile", "", "write the image ID (config digest; an index's digest for an index) to this file")
	f.StringVar(&bf.metadata, "metadata-file", "", "write build result metadata (JSON) to this file")
	f.BoolVar(&bf.detach, "detach", false, "upload the context and queue a build that kiln runs and pushes itself; print its id and return (follow it with: kiln builds logs -f ID)")
	f.StringVar(&bf.customer, "customer", "", "with --detach: build in this platform customer's project (created on first use) instead of --project")
	f.DurationVar(&bf.wait, "builder-wait", 3*time.Minute, "how long to wait for the builder to start")
	return cmd
}

func runBuild(ctx context.Context, g *globals, bf *buildFlags, stdout, stderr io.Writer) error {
	if bf.check {
		if c := bf.opts.Call; c != "" && c != "build" && !strings.HasPrefix(c, "check") {
			return fmt.Errorf("--check and --call=%s: give one: %w", c, errdefs.ErrInvalid)
		}
		if bf.opts.Call == "" || bf.opts.Call == "build" {
			bf.opts.Call = "check"
		}
	}
	// Validate everything local before talking to the server.
	parsed, err := buildreq.ParseFlags(bf.opts)
	if err != nil {
		return err
	}
	req, err := engine.Prepare(parsed, engine.IO{Stdout: bf.opts.Stdout, Progress: bf.progress})
	if err != nil {
		return err
	}
	defer req.Close()
	if bf.iidfile != "" && !req.IsCall() {
		if !req.ProducesImage() && !bf.saving() {
			return fmt.Errorf("--iidfile: the build has no image output (use --load, --push, --save, -o type=image, oci or docker): %w", errdefs.ErrInvalid)
		}
		// As buildx: a failed build must not leave an old image ID behind.
		if err := os.Remove(bf.iidfile); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("--iidfile: %w", err)
		}
	}
	if err := checkSaveFlags(bf, req); err != nil {
		return err
	}
	for _, w := range req.Warnings() {
		fmt.Fprintf(stderr, "kiln: warning: %s\n", w)
	}
	if !req.IsCall() {
		// The Docker engine is checked before a builder is taken.
		if err := req.CheckDocker(ctx); err != nil {
			return err
		}
	}
	projectID, err := client.FindProject(bf.project, projectDirOf(bf.opts.ContextPath))
	if err != nil {
		return err
	}
	cfg, err := g.config()
	if err != nil {
		return err
	}
	buildOpts := &cliv1.BuildOptions{Command: cliv1.Command_COMMAND_BUILD, Tags: req.Tags(), Outputs: session.ServerOutputs(req.Outputs()),
		Push: req.Pushes(), Load: req.Loads(), Lint: bf.opts.Lint}
	requestSave(bf, buildOpts)
	b, err := session.Create(ctx, cfg, projectID, buildOpts)
	if err != nil {
		return err
	}
	if b.URL != "" {
		fmt.Fprintf(stderr, "kiln: build %s in project %s (%s)\n", b.ID, projectID, b.URL)
	} else {
		fmt.Fprintf(stderr, "kiln: build %s in project %s\n", b.ID, projectID)
	}
	var saved []string
	if bf.saving() {
		if saved, err = applySave(req, b); err != nil {
			b.Finish(err)
			return err
		}
	}
	resp, solveErr := b.Run(ctx, req, session.RunOptions{Wait: bf.wait, Messages: stderr})
	finishErr := b.Finish(solveErr)
	if solveErr != nil {
		var unrecorded *session.UnrecordedError
		if errors.As(finishErr, &unrecorded) && unrecorded.Recorded != "" {
			// How kiln recorded it says why the solve was cut short.
			return errors.Join(solveErr, finishErr)
		}
		return solveErr
	}
	if finishErr != nil {
		// The exit code follows what kiln recorded, not what ran here.
		return finishErr
	}
	if bf.iidfile != "" && !req.IsCall() {
		if err := engine.WriteIIDFile(bf.iidfile, resp); err != nil {
			return err
		}
	}
	if bf.metadata != "" {
		if err := engine.WriteBuildMetadataFile(bf.metadata, resp, engine.BuildRef{ProjectID: projectID, BuildID: b.ID}); err != nil {
			return err
		}
	}
	if req.IsCall() {
		code, err := engine.PrintCallResult(stdout, req, resp)
		if err != nil {
			return err
		}
		if code != 0 {
			return exitError(code)
		}
		return nil
	}
	if c := req.GitCommit(); c != "" {
		fmt.Fprintf(stderr, "kiln: built git commit %s of %s\n", c, req.GitContext())
	}
	fmt.Fprintf(stderr, "kiln: build %s finished%s\n", b.ID, session.DescribeOutputs(req.Outputs(), resp))
	printSaved(stderr, saved, b.ID)
	return nil
}

// projectDirOf is where kiln.json is looked for, walking up, for a build of
// contextPath: the context directory, or the working directory for a tar
// on stdin ("-") or a git context.
func projectDirOf(contextPath string) string {
	if contextPath == "-" || buildreq.IsGitURL(contextPath) {
		return "."
	}
	return contextPath
}
