// Package platform is kiln's one platform type: what a build targets
// ("linux/arm/v7") and which builder runs it ("linux/arm64"). Every layer —
// flags, the API, the runner, the engine, the registry — parses platforms
// here and passes the typed value on.
package platform

import (
	"fmt"
	"runtime"
	"slices"
	"strings"

	"github.com/containerd/platforms"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kiln-dev/kiln/internal/errdefs"
)

// Platform is a normalized OCI platform of a Linux image.
type Platform struct {
	OS, Arch, Variant string
}

// The builders kiln runs: one per (project, platform), for these two.
var (
	AMD64 = Platform{OS: "linux", Arch: "amd64"}
	ARM64 = Platform{OS: "linux", Arch: "arm64"}
)

// builders maps each target kiln accepts to the builder that runs it
// natively (or, when the host is of the other architecture, under QEMU
// binfmt emulation). 32-bit x86 and ARM run on their 64-bit siblings.
// Anything else — riscv64, s390x, ppc64le, windows — has neither a builder
// nor an emulator kiln sets up, and is refused before a build starts rather
// than failing halfway with "exec format error".
var builders = map[string]Platform{
	"linux/amd64":    AMD64,
	"linux/amd64/v2": AMD64,
	"linux/amd64/v3": AMD64,
	"linux/amd64/v4": AMD64,
	"linux/386":      AMD64,
	"linux/arm64":    ARM64,
	"linux/arm/v7":   ARM64,
	"linux/arm/v6":   ARM64,
}

// Supported lists the targets kiln builds, for error messages.
const Supported = "linux/amd64, linux/arm64, linux/386, linux/arm/v7, linux/arm/v6"

// Parse normalizes one platform ("arm64" → linux/arm64, "linux/arm" →
// linux/arm/v7, "aarch64" → linux/arm64). A bare architecture means Linux:
// builders only run Linux, whatever the client's own OS. Parse accepts any
// well-formed platform; [Platform.Builder] says whether kiln can build it.
func Parse(s string) (Platform, error) {
	s = strings.TrimSpace(s)
	if s == "" || strings.Contains(s, ",") {
		return Platform{}, fmt.Errorf("platform %q: want os/arch[/variant], e.g. linux/arm64: %w", clip(s), errdefs.ErrInvalid)
	}
	spec, err := platforms.Parse(s)
	if err != nil {
		return Platform{}, fmt.Errorf("platform %q: want os/arch[/variant], e.g. linux/arm64: %w", clip(s), errdefs.ErrInvalid)
	}
	if !strings.Contains(s, "/") && spec.OS == runtime.GOOS && spec.Architecture != "" {
		spec.OS = "linux"
	}
	spec = platforms.Normalize(spec)
	return Platform{OS: spec.OS, Arch: spec.Architecture, Variant: spec.Variant}, nil
}

// ParseTarget parses a platform kiln can build (see [Supported]).
func ParseTarget(s string) (Platform, error) {
	p, err := Parse(s)
	if err != nil {
		return Platform{}, err
	}
	if _, ok := p.Builder(); !ok {
		return Platform{}, fmt.Errorf("platform %q: no kiln builder or emulator runs %s (supported: %s): %w", clip(s), p, Supported, errdefs.ErrInvalid)
	}
	return p, nil
}

// ParseList parses a comma-separated list of targets, as --platform takes
// it ("linux/amd64,linux/arm64"): each one normalized and supported,
// duplicates dropped, order kept. An empty value gives nil (the builder's
// own platform).
func ParseList(v string) ([]Platform, error) {
	if strings.TrimSpace(v) == "" {
		return nil, nil
	}
	var items []string
	for _, item := range strings.Split(v, ",") {
		if strings.TrimSpace(item) == "" {
			return nil, fmt.Errorf("platform list %q: empty platform in the list (want os/arch[/variant][,os/arch...], e.g. linux/amd64,linux/arm64): %w", clip(v), errdefs.ErrInvalid)
		}
		items = append(items, item)
	}
	return ParseTargets(items)
}

// ParseTargets parses several targets (see [ParseList]).
func ParseTargets(items []string) ([]Platform, error) {
	var out []Platform
	for _, item := range items {
		p, err := ParseTarget(item)
		if err != nil {
			return nil, err
		}
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out, nil
}

// ParseBuilder parses the platform of a builder: linux/amd64 or
// linux/arm64 (also "amd64", "x86_64", "arm64", "aarch64", "arm64/v8");
// "" is amd64.
func ParseBuilder(s string) (Platform, error) {
	if strings.TrimSpace(s) == "" {
		return AMD64, nil
	}
	in := s
	if strings.Contains(s, "/") && !strings.HasPrefix(strings.ToLower(s), "linux/") {
		in = "linux/" + s // "arm64/v8"
	}
	p, err := Parse(in)
	if err == nil && (p == AMD64 || p == ARM64) {
		return p, nil
	}
	return Platform{}, fmt.Errorf("platform %q: kiln builders run linux/amd64 or linux/arm64: %w", clip(s), errdefs.ErrInvalid)
}

// String is the OCI form: "linux/arm/v7".
func (p Platform) String() string {
	if p.Variant != "" {
		return p.OS + "/" + p.Arch + "/" + p.Variant
	}
	return p.OS + "/" + p.Arch
}

// IsZero reports whether p is unset (the builder's own platform).
func (p Platform) IsZero() bool { return p == Platform{} }

// Builder is the builder that runs target p, and whether there is one.
func (p Platform) Builder() (Platform, bool) {
	b, ok := builders[p.String()]
	return b, ok
}

// OCI is p as an OCI platform.
func (p Platform) OCI() ocispecs.Platform {
	return ocispecs.Platform{OS: p.OS, Architecture: p.Arch, Variant: p.Variant}
}

// Dir is the subdirectory (or tar prefix) p's files go to in a
// multi-platform local or tar output, as BuildKit and buildx name it:
// "linux_amd64", "linux_arm_v7".
func (p Platform) Dir() string { return strings.ReplaceAll(p.String(), "/", "_") }

// Strings is ps in OCI form.
func Strings(ps []Platform) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.String()
	}
	return out
}

func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}
