package sdk

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	kilnv1 "github.com/kiln-dev/kiln/gen/kiln/v1"
	"github.com/kiln-dev/kiln/gen/kiln/v1/kilnv1connect"
	"github.com/kiln-dev/kiln/internal/client"
	"github.com/kiln-dev/kiln/internal/platform"
	"github.com/kiln-dev/kiln/internal/retry"
	"github.com/kiln-dev/kiln/internal/steps"
)

// executeUploaded queues a build of an uploaded context that kiln runs
// itself (the source-build API, as `kiln build --detach` does), follows
// it to its end, and reads its image from kiln's registry. The image is
// then copied to the Builder's reference from this process.
func (b *Builder) executeUploaded(ctx context.Context, projectID string) (v1.ImageIndex, *Metadata, error) {
	r := b.s.req
	req := &kilnv1.CreateBuildRequest{
		Project:    &kilnv1.ProjectRef{Ref: &kilnv1.ProjectRef_ProjectId{ProjectId: projectID}},
		ContextKey: b.s.uploaded,
		Dockerfile: r.Dockerfile.Path,
		Target:     r.Target,
		BuildArgs:  r.Args,
		Tags:       b.s.tags,
		Platforms:  platform.Strings(r.Platforms),
		NoCache:    r.NoCache,
	}
	if len(r.Secrets) > 0 {
		req.Secrets = map[string]string{}
		for _, s := range r.Secrets {
			req.Secrets[s.ID] = string(s.Value)
		}
	}
	api := b.cfg.SourceBuilds()
	created, err := retry.Value(ctx, retry.API, func(ctx context.Context) (*connect.Response[kilnv1.CreateBuildResponse], error) {
		return api.CreateBuild(ctx, connect.NewRequest(req))
	})
	if err != nil {
		return nil, nil, fmt.Errorf("sdk: create build of uploaded context %s: %w", b.s.uploaded, err)
	}
	id := created.Msg.BuildId
	md := &Metadata{BuildID: id, ProjectID: created.Msg.ProjectId}

	p := newProgress(b.s.progress)
	build, err := follow(ctx, api, id, p)
	md.Steps = p.steps()
	if err != nil {
		if ctx.Err() != nil {
			// The caller gave up: so does the build.
			cctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			_, _ = api.CancelBuild(cctx, connect.NewRequest(&kilnv1.CancelBuildRequest{BuildId: id}))
			cancel()
		}
		return nil, md, fmt.Errorf("sdk: follow build %s: %w", id, err)
	}
	if build.Status != kilnv1.BuildStatus_BUILD_STATUS_SUCCEEDED {
		why := build.Error
		if why == "" {
			why = strings.ToLower(strings.TrimPrefix(build.Status.String(), "BUILD_STATUS_"))
		}
		return nil, md, &BuildError{BuildID: id, ProjectID: md.ProjectID, Step: p.failedStep(), Err: fmt.Errorf("build %s failed: %s", id, why)}
	}
	md.Refs = build.ImageRefs
	idx, digest, err := readIndex(ctx, b.cfg, id)
	if err != nil {
		return nil, md, err
	}
	md.Digest = digest
	if b.ref != nil {
		if err := remote.WriteIndex(b.ref, idx, remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)); err != nil {
			return nil, md, fmt.Errorf("sdk: push build %s's image to %s: %w", id, b.ref, err)
		}
		md.Refs = append(md.Refs, b.ref.String())
	}
	md.BuildxMetadata, err = json.MarshalIndent(map[string]any{
		"containerimage.digest": digest.String(),
		"image.name":            strings.Join(md.Refs, ","),
		"buildx.build.ref":      "kiln/" + md.ProjectID + "/" + id,
		"depot.build":           map[string]string{"buildID": id, "projectID": md.ProjectID},
	}, "", "  ")
	if err != nil {
		return nil, md, fmt.Errorf("sdk: %w", err)
	}
	return idx, md, nil
}

// follow reads build id's events into p until the build ends
// (client.WatchBuild) and returns the build as it ended.
func follow(ctx context.Context, api kilnv1connect.SourceBuildServiceClient, id string, p *progress) (*kilnv1.Build, error) {
	var lastSeq int64
	var seen kilnv1.BuildStatus
	return client.WatchBuild(ctx, api, id, true, func(ev *kilnv1.WatchBuildResponse) (bool, error) {
		switch e := ev.Event.(type) {
		case *kilnv1.WatchBuildResponse_Build:
			if e.Build.Status > seen {
				seen = e.Build.Status
				return true, nil
			}
		case *kilnv1.WatchBuildResponse_Step:
			p.step(stepFromProto(e.Step))
		case *kilnv1.WatchBuildResponse_Log:
			if e.Log.Seq > 0 && e.Log.Seq <= lastSeq {
				return false, nil
			}
			lastSeq = max(lastSeq, e.Log.Seq)
			p.log(e.Log.Digest, e.Log.Message)
			return true, nil
		}
		return false, nil
	})
}

func stepFromProto(s *kilnv1.Step) steps.Step {
	out := steps.Step{Digest: s.Digest, Name: s.Name, Cached: s.Cached, Error: s.Error}
	if s.StartedAt != nil {
		out.Started = s.StartedAt.AsTime()
	}
	if s.CompletedAt != nil {
		out.Completed = s.CompletedAt.AsTime()
	}
	return out
}
