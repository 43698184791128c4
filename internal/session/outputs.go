package session

import (
	"errors"
	"fmt"
	"strings"

	cliv1 "github.com/depot/depot-go/proto/depot/cli/v1"
	bkclient "github.com/moby/buildkit/client"
	"github.com/moby/buildkit/exporter/containerimage/exptypes"

	"github.com/kiln-dev/kiln/internal/client"
	"github.com/kiln-dev/kiln/internal/depotext"
	"github.com/kiln-dev/kiln/internal/engine"
)

// A build saved in kiln's registry (kiln build --save, kiln bake --save,
// the SDK): the server names where the build is saved
// (CreateBuildResponse.additional_tags: <project>:<build id> and one per
// save tag) and lends the build token to push with
// (additional_credentials), which [Create] reads into [Remote.SaveRefs] and
// [Remote.SaveCreds]; the builder pushes there as it exports, with those
// credentials layered over the user's Docker credentials in memory.

// maxSaveTags matches the server's limit (build.MaxSaveTags).
const maxSaveTags = 20

// CheckSave validates a save and its tags before the server is asked for
// anything.
func CheckSave(req *engine.Request, tags []string) error {
	if req.IsCall() {
		return errors.New("--save: --call runs a frontend method and builds nothing to save")
	}
	if len(tags) > maxSaveTags {
		return fmt.Errorf("--save-tag given %d times; at most %d", len(tags), maxSaveTags)
	}
	for _, t := range tags {
		if err := client.CheckTag(t); err != nil {
			return err
		}
	}
	return nil
}

// RequestSave asks CreateBuild to save the build (BuildOptions.save and
// save_tags, as the depot CLI sends them).
func RequestSave(o *cliv1.BuildOptions, tags []string) {
	o.Save = true
	depotext.SetSaveTags(o, tags)
}

// ServerOutputs are a build's outputs as the server records them
// (CreateBuild's BuildOptions.outputs).
func ServerOutputs(outs []engine.Output) []*cliv1.BuildOutput {
	var outputs []*cliv1.BuildOutput
	for _, o := range outs {
		attrs := map[string]string{}
		if o.Dest != "" {
			attrs["dest"] = o.Dest
		}
		if len(o.Names) > 0 {
			attrs["name"] = strings.Join(o.Names, ",")
		}
		if o.Push {
			attrs["push"] = "true"
		}
		outputs = append(outputs, &cliv1.BuildOutput{Kind: o.Type, Attributes: attrs})
	}
	return outputs
}

// DescribeOutputs says where the result went, for the last line of a build.
func DescribeOutputs(outs []engine.Output, resp *bkclient.SolveResponse) string {
	var parts []string
	digest := ""
	if resp != nil {
		digest = resp.ExporterResponse[exptypes.ExporterImageDigestKey]
	}
	for _, o := range outs {
		switch {
		case o.Save: // the caller says where it was saved
		case o.Push:
			parts = append(parts, fmt.Sprintf("pushed %s (%s)", strings.Join(o.Names, ", "), digest))
		case o.Load && len(o.Names) > 0:
			parts = append(parts, "loaded into Docker as "+strings.Join(o.Names, ", "))
		case o.Load:
			parts = append(parts, "loaded into Docker (untagged; see the image ID above)")
		case o.Dest == "-":
			parts = append(parts, o.Type+" output written to stdout")
		case o.Dest != "":
			parts = append(parts, o.Type+" output written to "+o.Dest)
		case o.Type == "image":
			parts = append(parts, "image kept on the builder (not pushed; add --push)")
		}
	}
	if len(parts) == 0 {
		return ""
	}
	return ": " + strings.Join(parts, "; ")
}
