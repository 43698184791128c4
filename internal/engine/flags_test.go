package engine

import (
	"io"

	"github.com/kiln-dev/kiln/internal/buildreq"
)

// Options are a test's build as `kiln build` gets it: the flags (parsed by
// buildreq.ParseFlags, as the CLI does) and the progress mode.
type Options struct {
	ContextPath, Dockerfile string
	Stdin                   io.Reader
	Stdout                  io.Writer
	Tags                    []string
	Target                  string
	BuildArgs, Labels       []string
	Secrets, SSH            []string
	NoCache                 bool
	NoCacheFilter           []string
	BuildContexts           []string
	Network                 string
	Platform, BuildPlatform string
	Outputs                 []string
	Push, Load              bool
	Provenance, SBOM        string
	Attests                 []string
	CacheFrom, CacheTo      []string
	Call                    string
	Lint                    bool
	LintFailOn              string
	Progress                string
}

// prepareOptions parses o's flags and prepares the request, as `kiln
// build` does.
func prepareOptions(o Options) (*Request, error) {
	req, err := buildreq.ParseFlags(buildreq.Flags{
		ContextPath: o.ContextPath, Dockerfile: o.Dockerfile, Stdin: o.Stdin, Stdout: o.Stdout,
		Tags: o.Tags, Target: o.Target, BuildArgs: o.BuildArgs, Labels: o.Labels,
		Secrets: o.Secrets, SSH: o.SSH, NoCache: o.NoCache, NoCacheFilter: o.NoCacheFilter,
		BuildContexts: o.BuildContexts, Network: o.Network, Platform: o.Platform, BuildPlatform: o.BuildPlatform,
		Outputs: o.Outputs, Push: o.Push, Load: o.Load, Provenance: o.Provenance, SBOM: o.SBOM, Attests: o.Attests,
		CacheFrom: o.CacheFrom, CacheTo: o.CacheTo, Call: o.Call, Lint: o.Lint, LintFailOn: o.LintFailOn,
	})
	if err != nil {
		return nil, err
	}
	return Prepare(req, IO{Stdout: o.Stdout, Progress: o.Progress})
}
