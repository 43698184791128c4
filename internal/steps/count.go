package steps

import (
	"context"
	"regexp"
	"strings"

	"google.golang.org/grpc/metadata"
)

// Which steps count: the one rule for a build's cached and total steps,
// shared by the server (GetBuild, the share page, usage, metrics) and the
// CLI (kiln builds get, kiln builds insights).

// dockerfileStepRe matches the vertex names BuildKit's Dockerfile frontend
// gives the user's instructions: "[stage n/m] INSTRUCTION", "[n/m] …", and
// with a platform prefix in multi-platform builds "[linux/amd64 stage n/m] …".
var dockerfileStepRe = regexp.MustCompile(`^\[[^\]]*\b\d+/\d+\] `)

// IsUserStep reports whether a vertex counts as a build step in
// total_steps and cached_steps: the numbered Dockerfile instructions a user
// sees (and sees marked CACHED) in `kiln build --progress plain`. BuildKit's
// own work is not counted: "[internal] load …", "[auth] …", exporting,
// sending the result; nor are the client's and kiln's own steps
// ("[depot] …", "[kiln] …", IsClientStep).
//
// A build that has no Dockerfile-shaped steps at all (raw LLB from
// depot-go) counts every vertex except BuildKit's own; see Counted.
func IsUserStep(name string) bool { return dockerfileStepRe.MatchString(name) }

// IsClientStep reports whether a step is one a client or kiln adds itself
// ("[depot] launching amd64 machine", "[kiln] fetch the build context"):
// kept as a step, never counted.
func IsClientStep(name string) bool {
	return strings.HasPrefix(name, "[depot]") || strings.HasPrefix(name, "[kiln]")
}

// buildkitOwn are the name prefixes of vertices BuildKit adds itself.
var buildkitOwn = []string{"[internal]", "[auth]", "exporting ", "importing ", "sending tarball", "resolving provenance",
	"writing image", "naming to", "unpacking to", "copying files", "pushing ", "merging manifest"}

func isBuildkitOwn(name string) bool {
	if IsClientStep(name) {
		return true // not BuildKit's, but not the build's either
	}
	for _, p := range buildkitOwn {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return name == ""
}

// Counted returns the steps of all that count as the build's steps, in
// order, name giving a step's name: the Dockerfile instructions
// (IsUserStep) when there are any, else every step that is neither
// BuildKit's own nor a client's (raw LLB).
func Counted[S any](all []S, name func(S) string) []S {
	var out []S
	for _, st := range all {
		if IsUserStep(name(st)) {
			out = append(out, st)
		}
	}
	if len(out) > 0 {
		return out
	}
	for _, st := range all {
		if !isBuildkitOwn(name(st)) {
			out = append(out, st)
		}
	}
	return out
}

// LabelHeader is the gRPC metadata key with which a client labels a
// BuildKit Solve call for the steps kiln records from the builder: kiln
// bake sends each target's name, so the recorded steps read as its display
// does ("[app 2/3] RUN …"). kiln's gateway reads it from the Solve call's
// headers; a label that is not a short plain name is ignored (Label).
const LabelHeader = "kiln-step-label"

// Label returns v if it can label steps (1 to 64 letters, digits and
// "._-"), else "".
func Label(v string) string {
	if len(v) == 0 || len(v) > 64 {
		return ""
	}
	for _, c := range v {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return ""
		}
	}
	return v
}

// WithLabel returns ctx whose BuildKit calls carry label as LabelHeader.
func WithLabel(ctx context.Context, label string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, LabelHeader, label)
}
