package engine

import (
	"runtime"
	"slices"
	"strings"

	"github.com/containerd/platforms"
	"github.com/moby/buildkit/client"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
)

// Builder platforms: kiln runs one builder per (project, platform), and
// these are the platforms builders exist for.
const (
	BuilderAMD64 = "linux/amd64"
	BuilderARM64 = "linux/arm64"
)

// BuildPlatformDynamic is --build-platform's default: each target platform
// is built on the builder of its own architecture.
const BuildPlatformDynamic = "dynamic"

// targetBuilder maps each target architecture kiln accepts to the builder
// that runs it natively (or, when the server's host is of the other
// architecture, under QEMU binfmt emulation). 32-bit x86 and ARM run on
// their 64-bit siblings. Anything else — riscv64, s390x, ppc64le, windows —
// has neither a builder nor an emulator kiln sets up, and is refused before
// the build starts rather than failing halfway with "exec format error".
var targetBuilder = map[string]string{
	"linux/amd64":    BuilderAMD64,
	"linux/amd64/v2": BuilderAMD64,
	"linux/amd64/v3": BuilderAMD64,
	"linux/amd64/v4": BuilderAMD64,
	"linux/386":      BuilderAMD64,
	"linux/arm64":    BuilderARM64,
	"linux/arm/v7":   BuilderARM64,
	"linux/arm/v6":   BuilderARM64,
}

const supportedPlatforms = "linux/amd64, linux/arm64, linux/386, linux/arm/v7, linux/arm/v6"

// parsePlatformFlags parses --platform (one platform or a comma-separated
// list, as buildx takes it) and --build-platform.
func (r *Request) parsePlatformFlags(platformFlag, buildPlatformFlag string) error {
	list, err := ParsePlatforms(platformFlag)
	if err != nil {
		return err
	}
	r.platforms = list
	if len(list) == 1 {
		r.platform = list[0]
		r.frontendAttrs["platform"] = r.platform
	}
	// With several platforms, "platform" is set per solve (see SolveMulti).

	switch b := strings.TrimSpace(buildPlatformFlag); b {
	case "", BuildPlatformDynamic:
		r.buildPlatform = ""
	default:
		p, err := parseOnePlatform(b)
		if err != nil || (p != BuilderAMD64 && p != BuilderARM64) {
			return invalidf("--build-platform %q: want %s, %s or %s", buildPlatformFlag, BuildPlatformDynamic, BuilderAMD64, BuilderARM64)
		}
		r.buildPlatform = p
	}
	return nil
}

// ParsePlatforms parses a --platform value: one platform or a
// comma-separated list ("linux/amd64,linux/arm64"). Platforms are
// normalized ("arm64" → "linux/arm64", "linux/arm" → "linux/arm/v7"),
// duplicates dropped and the order kept. An empty value gives nil (the
// builder's own platform). Errors wrap errdefs.ErrInvalid and name the
// flag and the value.
func ParsePlatforms(v string) ([]string, error) {
	if strings.TrimSpace(v) == "" {
		return nil, nil
	}
	var out []string
	for _, item := range strings.Split(v, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			return nil, invalidf("--platform %q: empty platform in the list (want os/arch[/variant][,os/arch...], e.g. linux/amd64,linux/arm64)", v)
		}
		p, err := parseOnePlatform(item)
		if err != nil {
			return nil, invalidf("--platform %q: %q is not a valid platform (want os/arch[/variant], e.g. linux/arm64)", v, item)
		}
		if _, ok := targetBuilder[p]; !ok {
			return nil, invalidf("--platform %q: no kiln builder or emulator runs %s (supported: %s)", v, p, supportedPlatforms)
		}
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out, nil
}

// parseOnePlatform normalizes one platform. A bare architecture means
// Linux: builders only run Linux, whatever the client's own OS.
func parseOnePlatform(s string) (string, error) {
	spec, err := platforms.Parse(s)
	if err != nil {
		return "", err
	}
	if !strings.Contains(s, "/") && spec.OS == runtime.GOOS && spec.Architecture != "" {
		spec.OS = "linux"
	}
	return platforms.Format(platforms.Normalize(spec)), nil
}

// Platforms are the requested target platforms, normalized, in the order
// given: none (the builder's own platform), one, or several for a
// multi-platform build.
func (r *Request) Platforms() []string { return slices.Clone(r.platforms) }

// MultiPlatform reports whether the build targets more than one platform
// and so must be run with [SolveMulti].
func (r *Request) MultiPlatform() bool { return len(r.platforms) > 1 }

// BuilderPlatform is the builder ("linux/amd64" or "linux/arm64") that
// builds target, a platform from [Request.Platforms] ("" for a build with
// no --platform). --build-platform forces one builder for every target;
// otherwise (dynamic) each target runs on the builder of its architecture
// and a build with no --platform on the amd64 builder.
func (r *Request) BuilderPlatform(target string) string {
	if r.buildPlatform != "" {
		return r.buildPlatform
	}
	if b, ok := targetBuilder[target]; ok {
		return b
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
		if b := r.BuilderPlatform(p); !slices.Contains(out, b) {
			out = append(out, b)
		}
	}
	return out
}

// checkMultiPlatformOutput refuses, before anything is built, the outputs
// that cannot hold several platforms: the Docker image format (--load,
// type=docker) has no manifest lists. buildx fails the same way, with the
// same words.
func (r *Request) checkMultiPlatformOutput() error {
	if !r.MultiPlatform() {
		return nil
	}
	for _, o := range r.outputs {
		if o.typ == client.ExporterDocker {
			return invalidf("%s: docker exporter does not currently support exporting manifest lists (--platform %s): "+
				"the Docker engine keeps one platform per image; build one platform (e.g. --platform %s), or use --push or -o type=oci,dest=FILE for all of them",
				o.flag, strings.Join(r.platforms, ","), r.platforms[0])
		}
	}
	return nil
}

// platformDir is the subdirectory (or tar prefix) a platform's files go to
// in a multi-platform type=local or type=tar output, as BuildKit and buildx
// name it: "linux_amd64", "linux_arm_v7".
func platformDir(p string) string {
	return strings.ReplaceAll(p, "/", "_")
}

// ociPlatform is p as an OCI platform.
func ociPlatform(p string) (ocispecs.Platform, error) {
	spec, err := platforms.Parse(p)
	if err != nil {
		return ocispecs.Platform{}, err
	}
	return platforms.Normalize(spec), nil
}
