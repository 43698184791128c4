package buildreq

import (
	"path"
	"strconv"
	"strings"

	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/platform"
)

// Validate checks a request made by any producer — flags, a bake target,
// a stored source-build spec, Depot's options, the SDK — before anything
// reads the context or talks to a builder: each value well formed, and the
// values consistent with each other. Errors wrap errdefs.ErrInvalid and
// name the field (outputs and caches in buildx's syntax). The files a
// request names are the engine's to check, when it opens them.
func (r Request) Validate() error {
	contexts := 0
	for _, set := range []bool{r.Context.Dir != "", r.Context.Tar != nil, r.Context.Git != ""} {
		if set {
			contexts++
		}
	}
	switch {
	case contexts == 0:
		return errdefs.Invalidf("build context: a path (or \"-\" for a tar archive on stdin, or a git URL) is required")
	case contexts > 1:
		return errdefs.Invalidf("build context: give one of a directory, a tar archive or a git URL, not both")
	case r.Context.Git != "":
		if _, err := ParseGitURL(r.Context.Git); err != nil {
			return labelled(err, "build context")
		}
		if r.Dockerfile.Path != "" && path.IsAbs(r.Dockerfile.Path) {
			return errdefs.Invalidf("dockerfile %q: with a git context, the Dockerfile is a path inside the repository's context directory", r.Dockerfile.Path)
		}
	}
	switch {
	case r.Dockerfile.Path != "" && r.Dockerfile.Inline != nil:
		return errdefs.Invalidf("dockerfile: give a path or its contents, not both")
	}
	for _, t := range r.Tags {
		if err := checkTag(t); err != nil {
			return labelled(err, "tag "+strconv.Quote(t))
		}
	}
	for k := range r.Args {
		if !checkName(k) {
			return errdefs.Invalidf("build arg %q: missing or malformed name", k)
		}
	}
	for k := range r.Labels {
		if !checkName(k) {
			return errdefs.Invalidf("label %q: missing or malformed name", k)
		}
	}
	if !checkTarget(r.Target) {
		return errdefs.Invalidf("target %q: not a valid stage name", r.Target)
	}
	for _, s := range r.NoCacheFilter {
		if !checkStage(s) {
			return errdefs.Invalidf("no-cache filter %q: not a valid stage name", s)
		}
	}
	if !checkNetwork(r.Network) {
		return errdefs.Invalidf("network %q: unknown network mode (supported: default, none)", r.Network)
	}
	if err := r.validatePlatforms(); err != nil {
		return err
	}
	if err := r.validateOutputs(); err != nil {
		return err
	}
	if err := r.validateAttests(); err != nil {
		return err
	}
	for _, list := range []struct {
		flag    string
		entries []Cache
	}{{"--cache-from", r.CacheFrom}, {"--cache-to", r.CacheTo}} {
		for _, c := range list.entries {
			if err := checkCache(c, list.flag == "--cache-to"); err != nil {
				return labelled(err, list.flag+" "+strconv.Quote(c.String()))
			}
		}
	}
	if err := checkCall(r.Call); err != nil {
		return labelled(err, "call "+strconv.Quote(r.Call.Method))
	}
	if r.Lint != nil {
		if !checkLintFailOn(r.Lint.FailOn) {
			return errdefs.Invalidf("lint fail-on %q: unknown level (supported: error, warn, none)", r.Lint.FailOn)
		}
		if r.Call.Method != "" {
			return errdefs.Invalidf("--lint and --call=%s: give one (--call=check prints the same checks without building)", r.Call.Method)
		}
	}
	return r.validateMounts()
}

func (r Request) validatePlatforms() error {
	for _, p := range r.Platforms {
		if _, ok := p.Builder(); !ok {
			return errdefs.Invalidf("platform %s: no kiln builder or emulator runs %s (supported: %s)", p, p, platform.Supported)
		}
	}
	if b := r.BuildPlatform; !b.IsZero() && b != platform.AMD64 && b != platform.ARM64 {
		return errdefs.Invalidf("build platform %s: kiln builders run %s or %s", b, platform.AMD64, platform.ARM64)
	}
	return nil
}

func (r Request) validateOutputs() error {
	labels := make([]string, len(r.Outputs))
	for i, o := range r.Outputs {
		labels[i] = "-o " + strconv.Quote(o.String())
		if err := checkOutputShape(o); err != nil {
			return labelled(err, labels[i])
		}
		if err := checkOutputAttrs(o); err != nil {
			return labelled(err, labels[i])
		}
	}
	if err := checkOutputSet(r.Outputs, labels, len(r.Tags) > 0); err != nil {
		return err
	}
	// The Docker image format (--load, type=docker) has no manifest
	// lists; buildx fails the same way, with the same words.
	if len(r.Platforms) > 1 {
		for i, o := range r.Outputs {
			if o.Type == OutputDocker {
				return errdefs.Invalidf("%s: docker exporter does not currently support exporting manifest lists (--platform %s): "+
					"the Docker engine keeps one platform per image; build one platform (e.g. --platform %s), or use --push or -o type=oci,dest=FILE for all of them",
					labels[i], strings.Join(platform.Strings(r.Platforms), ","), r.Platforms[0])
			}
		}
	}
	return nil
}

func (r Request) validateAttests() error {
	seen := map[string]bool{}
	for _, a := range r.Attests {
		label := "attestation " + strconv.Quote(a.Type)
		if err := checkAttest(a); err != nil {
			return labelled(err, label)
		}
		if seen[a.Type] {
			return errdefs.Invalidf("%s: given more than once", label)
		}
		seen[a.Type] = true
	}
	return nil
}

// validateMounts checks what the session sends: secrets, ssh and named
// contexts.
func (r Request) validateMounts() error {
	seen := map[string]bool{}
	for _, s := range r.Secrets {
		sources := 0
		for _, set := range []bool{s.Src != "", s.Env != "", s.Value != nil} {
			if set {
				sources++
			}
		}
		switch {
		case s.ID == "":
			return errdefs.Invalidf("secret: missing id")
		case sources != 1:
			return errdefs.Invalidf("secret %q: give exactly one of a file, an environment variable or a value", s.ID)
		case seen[s.ID]:
			return errdefs.Invalidf("secret %q: duplicate secret id", s.ID)
		}
		seen[s.ID] = true
	}
	for _, s := range r.SSH {
		if s.ID == "" {
			return errdefs.Invalidf("ssh: missing id")
		}
		for _, p := range s.Paths {
			if p == "" {
				return errdefs.Invalidf("ssh %q: empty path", s.ID)
			}
		}
	}
	for name, c := range r.NamedContexts {
		label := "--build-context " + strconv.Quote(name+"="+c.String())
		if n, err := ContextName(name); err != nil || n != name {
			return errdefs.Invalidf("%s: invalid name %q", label, name)
		}
		if err := checkNamedContext(c); err != nil {
			return labelled(err, label)
		}
	}
	return nil
}
