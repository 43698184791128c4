package main

import (
	"slices"
	"time"

	"github.com/spf13/cobra"

	"github.com/kiln-dev/kiln/internal/bake"
	"github.com/kiln-dev/kiln/internal/cli"
	"github.com/kiln-dev/kiln/internal/client"
)

type bakeFlags struct {
	files      []string
	sets       []string
	print      bool
	load       bool
	push       bool
	save       bool
	saveTags   []string
	noCache    bool
	progress   string
	metadata   string
	provenance string
	project    string
	wait       time.Duration
}

func newBakeCmd() *cobra.Command {
	var bf bakeFlags
	cmd := &cobra.Command{
		Use:   "bake [OPTIONS] [TARGET...]",
		Short: "Build the targets of a bake file (HCL, JSON or Compose) on kiln builders",
		Long: `Build the targets of a bake file like 'docker buildx bake' (and 'depot bake'),
on the projects' remote BuildKit builders.

Files: -f FILE (repeatable, - for stdin), or every one of compose.yaml, compose.yml,
docker-compose.yml, docker-compose.yaml, docker-bake.json, docker-bake.override.json,
docker-bake.hcl, docker-bake.override.hcl found in the working directory (later files
override earlier ones). TARGET names targets or groups (default: the "default" group).
The file language is buildx's: variables (overridden by the environment, e.g.
TAG=v2 kiln bake), functions, groups, inherits, matrix, --set, and
contexts = { app = "target:app" } to build FROM another target's result.

Projects: a target's project is its project_id attribute (HCL/JSON), or
x-depot.project-id / x-kiln.project-id in a Compose service's build section;
other targets use --project (KILN_PROJECT_ID, kiln.json). Each project gets one
kiln build holding all of its targets; projects build in parallel, and a
project's targets build in parallel on its builders. A "target:" context must
name a target of the same project.

Failure: as in buildx, one failing target fails the bake. The other targets are
canceled, every target's outcome is listed, and kiln exits non-zero.
--load, --push and --save apply to the targets asked for, never to targets built
only as another target's context.`,
		Example: `  kiln bake
  kiln bake --print
  TAG=v2 kiln bake --push app worker
  kiln bake -f docker-bake.hcl -f ci.hcl --set '*.platform=linux/arm64' --set app.args.V=2
  kiln bake -f compose.yaml --load
  kiln bake --save --save-tag main --metadata-file meta.json`,
		RunE: func(cmd *cobra.Command, args []string) error {
			return bake.Run(cmd.Context(), bake.RunOptions{Files: bf.files, Overrides: bakeOverrides(&bf), Targets: args,
				Print: bf.print, Save: bf.save, SaveTags: bf.saveTags, Progress: bf.progress, Metadata: bf.metadata,
				Project: bf.project, Wait: bf.wait, Stdin: cmd.InOrStdin(), Stdout: cmd.OutOrStdout(), Stderr: cmd.ErrOrStderr(),
				Config: func() (client.Config, error) { return cli.Config(cmd) }})
		},
	}
	f := cmd.Flags()
	f.StringArrayVarP(&bf.files, "file", "f", nil, "bake file: HCL, JSON or Compose (repeatable; - reads stdin)")
	f.StringArrayVar(&bf.sets, "set", nil, `override a target attribute: TARGET.KEY=VALUE, e.g. "*.platform=linux/arm64", app.args.V=2, app.project_id=ID (repeatable; KEY+=VALUE appends)`)
	f.BoolVar(&bf.print, "print", false, "print the resolved targets as JSON and exit: nothing is built, no server is contacted")
	f.BoolVar(&bf.load, "load", false, `load the images into the Docker engine at DOCKER_HOST (shorthand for "--set=*.output=type=docker")`)
	f.BoolVar(&bf.push, "push", false, `push the images to their tags (shorthand for "--set=*.output=type=registry")`)
	f.BoolVar(&bf.save, "save", false, "save the images in kiln's registry, each as <registry>/<project>:<build id>-<target>")
	f.StringArrayVar(&bf.saveTags, "save-tag", nil, "also save each image as <registry>/<project>:<TAG>-<target> (repeatable; implies --save)")
	f.BoolVar(&bf.noCache, "no-cache", false, "do not use the cache when building any target")
	f.StringVar(&bf.progress, "progress", "auto", "progress output: auto | plain | tty | quiet | rawjson")
	f.StringVar(&bf.metadata, "metadata-file", "", "write the build result metadata of every target (a JSON object keyed by target) to this file")
	f.StringVar(&bf.provenance, "provenance", "", `provenance attestation for every target: true | false | min | max | mode=min|max,... (shorthand for "--set=*.attest=type=provenance,...")`)
	f.StringVar(&bf.project, "project", "", "project of the targets that name none (env KILN_PROJECT_ID, DEPOT_PROJECT_ID, or kiln.json)")
	f.DurationVar(&bf.wait, "builder-wait", 3*time.Minute, "how long to wait for a builder to start")
	return cmd
}

// bakeOverrides are the --set values plus the ones kiln bake's own flags
// stand for, the way buildx derives them.
func bakeOverrides(bf *bakeFlags) []string {
	out := slices.Clone(bf.sets)
	if bf.push {
		out = append(out, "*.push=true")
	}
	if bf.load {
		out = append(out, "*.load=true")
	}
	if bf.noCache {
		out = append(out, "*.no-cache=true")
	}
	if p := bf.provenance; p != "" {
		switch p {
		case "min", "max": // kiln build's shorthands
			p = "mode=" + p
		case "true", "false":
			p = "disabled=" + map[string]string{"true": "false", "false": "true"}[p]
		}
		out = append(out, "*.attest=type=provenance,"+p)
	}
	return out
}
