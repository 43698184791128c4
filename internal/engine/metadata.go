package engine

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/kiln-dev/kiln/internal/atomicfile"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/moby/buildkit/client"
	"github.com/moby/buildkit/exporter/containerimage/exptypes"
)

// WriteIIDFile implements --iidfile: it writes the image ID of the build
// result to path. Like buildx, the image ID is the config digest
// (containerimage.config.digest) when the exporter reports one, and the
// image digest (containerimage.digest) otherwise. It is an error, wrapping
// errdefs.ErrFailedPrecondition, when the output produced no image (e.g.
// type=local or type=tar).
func WriteIIDFile(path string, resp *client.SolveResponse) error {
	if resp == nil {
		return errors.New("--iidfile: no build result")
	}
	id := resp.ExporterResponse[exptypes.ExporterImageConfigDigestKey]
	if id == "" {
		id = resp.ExporterResponse[exptypes.ExporterImageDigestKey]
	}
	if id == "" {
		return errdefs.Wrapf(errdefs.ErrFailedPrecondition, nil,
			"--iidfile %s: the build output produced no image digest (use an image-producing output such as type=oci or type=docker)", path)
	}
	if err := atomicfile.Write(path, []byte(id), 0o644); err != nil {
		return fmt.Errorf("--iidfile %s: %w", path, err)
	}
	return nil
}

// WriteMetadataFile implements --metadata-file: it writes the exporter
// response to path as a JSON object. Like buildx, values that are base64
// encoded JSON objects (or lists of objects), such as
// containerimage.descriptor, are embedded decoded; all other values are
// kept as strings.
func WriteMetadataFile(path string, resp *client.SolveResponse) error {
	return WriteBuildMetadataFile(path, resp, BuildRef{})
}

// BuildRef names the kiln build a result came from.
type BuildRef struct {
	ProjectID, BuildID string
}

// WriteBuildMetadataFile is [WriteMetadataFile] with the build named the
// way tools reading buildx's and depot's metadata expect:
// "buildx.build.ref" is "kiln/<project>/<build>" (buildx writes
// "<builder>/<node>/<ref>"), and "depot.build" holds buildID and projectID
// as depot build writes them.
func WriteBuildMetadataFile(path string, resp *client.SolveResponse, ref BuildRef) error {
	if resp == nil {
		return errors.New("--metadata-file: no build result")
	}
	dt, err := BuildMetadata(resp, ref)
	if err != nil {
		return fmt.Errorf("--metadata-file %s: %w", path, err)
	}
	if err := atomicfile.Write(path, dt, 0o644); err != nil {
		return fmt.Errorf("--metadata-file %s: %w", path, err)
	}
	return nil
}

// BuildMetadata is what [WriteBuildMetadataFile] writes, as JSON.
func BuildMetadata(resp *client.SolveResponse, ref BuildRef) ([]byte, error) {
	return json.MarshalIndent(buildMetadata(resp, ref), "", "  ")
}

// buildMetadata is the metadata file's object for one build: the decoded
// exporter response and, when ref names a build, the keys naming it.
func buildMetadata(resp *client.SolveResponse, ref BuildRef) map[string]any {
	out := decodeExporterResponse(resp.ExporterResponse)
	if ref.BuildID != "" {
		out["buildx.build.ref"] = "kiln/" + ref.ProjectID + "/" + ref.BuildID
		out["depot.build"] = map[string]string{"buildID": ref.BuildID, "projectID": ref.ProjectID}
	}
	return out
}

func decodeExporterResponse(resp map[string]string) map[string]any {
	out := make(map[string]any, len(resp))
	for k, v := range resp {
		out[k] = v
		var dt []byte
		if k == "result.json" {
			dt = []byte(v) // already JSON
		} else {
			b, err := base64.StdEncoding.DecodeString(v)
			if err != nil {
				continue
			}
			dt = b
		}
		var obj map[string]any
		if err := json.Unmarshal(dt, &obj); err == nil && len(obj) > 0 {
			out[k] = json.RawMessage(dt)
			continue
		}
		var list []map[string]any
		if err := json.Unmarshal(dt, &list); err == nil && len(list) > 0 {
			out[k] = json.RawMessage(dt)
		}
	}
	return out
}
