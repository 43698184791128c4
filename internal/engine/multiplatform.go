package engine

import (
	"slices"

	"github.com/kiln-dev/kiln/internal/platform"
)

// Builder platforms: kiln runs one builder per (project, platform), and
// these are the platforms builders exist for.
const (
	BuilderAMD64 = "linux/amd64" // platform.AMD64
	BuilderARM64 = "linux/arm64" // platform.ARM64
)

// Platforms are the requested target platforms, normalized, in the order
// given: none (the builder's own platform), one, or several for a
// multi-platform build.
func (r *Request) Platforms() []string { return platform.Strings(r.platforms) }

// MultiPlatform reports whether the build targets more than one platform
// and so must be run with [SolveMulti].
func (r *Request) MultiPlatform() bool { return len(r.platforms) > 1 }

// BuilderPlatform is the builder ("linux/amd64" or "linux/arm64") that
// builds target, a platform from [Request.Platforms] ("" for a build with
// no platform). A build platform forces one builder for every target;
// otherwise (dynamic) each target runs on the builder of its architecture
// and a build with no platform on the amd64 builder.
func (r *Request) BuilderPlatform(target string) string {
	if !r.buildPlatform.IsZero() {
		return r.buildPlatform.String()
	}
	if p, err := platform.Parse(target); err == nil {
		if b, ok := p.Builder(); ok {
			return b.String()
		}
	}
	return BuilderAMD64
}

// BuilderPlatforms are the distinct builders the build needs, in the order
// of the targets they first build.
func (r *Request) BuilderPlatforms() []string {
	if len(r.platforms) == 0 {
		return []string{r.BuilderPlatform("")}
	}
	var out []string
	for _, p := range r.platforms {
		if b := r.BuilderPlatform(p.String()); !slices.Contains(out, b) {
			out = append(out, b)
		}
	}
	return out
}
