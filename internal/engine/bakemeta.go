package engine

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/moby/buildkit/client"

	"github.com/kiln-dev/kiln/internal/atomicfile"
)

// TargetResult is one bake target's build result, for
// [WriteBakeMetadataFile].
type TargetResult struct {
	Resp *client.SolveResponse
	Ref  BuildRef
}

// WriteBakeMetadataFile implements `kiln bake --metadata-file`: like
// `docker buildx bake`, one object per target name, each holding what
// [WriteBuildMetadataFile] writes for a single build (the decoded exporter
// response, buildx.build.ref and depot.build).
func WriteBakeMetadataFile(path string, results map[string]TargetResult) error {
	out := make(map[string]map[string]any, len(results))
	for name, r := range results {
		if r.Resp == nil {
			return errors.New("--metadata-file: target " + name + " has no build result")
		}
		out[name] = buildMetadata(r.Resp, r.Ref)
	}
	dt, err := json.MarshalIndent(out, "", "  ")
	if err != nil {
		return fmt.Errorf("--metadata-file %s: %w", path, err)
	}
	if err := atomicfile.Write(path, dt, 0o644); err != nil {
		return fmt.Errorf("--metadata-file %s: %w", path, err)
	}
	return nil
}
