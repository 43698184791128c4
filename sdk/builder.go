package sdk

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"time"

	cliv1 "github.com/depot/depot-go/proto/depot/cli/v1"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/kiln-dev/kiln/internal/buildreq"
	"github.com/kiln-dev/kiln/internal/client"
	"github.com/kiln-dev/kiln/internal/depotext"
	"github.com/kiln-dev/kiln/internal/engine"
	"github.com/kiln-dev/kiln/internal/session"
)

// defaultWait is how long Execute waits for a builder to start, as `kiln
// build --builder-wait` does by default.
const defaultWait = 3 * time.Minute

// Builder is one build through kiln, ready to [Builder.Execute]. Make it
// with [NewBuilder]. A Builder runs once: its options (a tar context in
// particular) are consumed by Execute.
type Builder struct {
	ref      name.Reference // also push here; nil: kiln's registry only
	s        settings
	cfg      client.Config
	executed bool
}

// NewBuilder validates opts and returns a Builder for them. Nothing talks
// to a server here: a bad option, or a server or token that cannot be
// found, is an error now.
//
// ref, when not nil, is where the image is also pushed (with the Docker
// credentials of the user running the program, as `docker push` would
// use them); with a nil ref the image is kept only in kiln's registry,
// where [Builder.Execute] reads it back. Either way the image is saved in
// kiln's registry as <project>:<build id> and under each [WithTags] tag.
func NewBuilder(ref name.Reference, opts ...Option) (*Builder, error) {
	b := &Builder{ref: ref, s: settings{wait: defaultWait}}
	for _, o := range opts {
		if o == nil {
			continue
		}
		if err := o.apply(&b.s); err != nil {
			return nil, err
		}
	}
	if err := b.s.check(); err != nil {
		return nil, err
	}
	cfg, err := client.Resolve(b.s.apiURL, b.s.token)
	if err != nil {
		return nil, fmt.Errorf("sdk: %w", err)
	}
	b.cfg = cfg
	return b, nil
}

// Metadata describes a finished build.
type Metadata struct {
	// BuildID and ProjectID name the build (`kiln builds get BUILD_ID`,
	// `kiln pull BUILD_ID`).
	BuildID, ProjectID string
	// Digest is the digest of the image in kiln's registry: its image
	// index, or its manifest for a single-platform image without
	// attestations (the index Execute returns then wraps it). The copy
	// the builder pushes to the Builder's reference holds the same images,
	// but its index may differ: BuildKit records provenance per
	// destination.
	Digest v1.Hash
	// Refs are the references the image was saved as in kiln's registry
	// (<registry>/<project>:<build id>, and one per [WithTags] tag) and,
	// last, the Builder's reference when it was pushed there.
	Refs []string
	// Steps are the build's steps, in the order they started.
	Steps []Step
	// BuildxMetadata is the JSON `kiln build --metadata-file` (and `docker
	// buildx build --metadata-file`) writes: the exporter's response
	// (containerimage.digest, containerimage.descriptor, image.name, ...)
	// and the build's reference (buildx.build.ref, depot.build). For an
	// uploaded context, which kiln builds itself, it holds the keys kiln
	// knows afterwards: the digest, the names and the build's reference.
	BuildxMetadata json.RawMessage
}

// Execute runs the build and returns its image, as an OCI image index
// read from kiln's registry, and its metadata.
//
// The index is read lazily: its manifests and blobs are fetched from
// kiln's registry when asked for, with a pull token good for an hour. A
// single-platform image whose manifest is not in an index is wrapped in
// one. To keep the image, write it to a registry (go-containerregistry's
// remote.WriteIndex) or give NewBuilder a reference.
//
// A build that fails returns a [*BuildError] naming the step that failed,
// with the Metadata of what ran. Canceling ctx cancels the build.
func (b *Builder) Execute(ctx context.Context) (v1.ImageIndex, *Metadata, error) {
	if b.executed {
		return nil, nil, errors.New("sdk: Execute called twice: a Builder runs once")
	}
	b.executed = true
	projectDir := "."
	if b.s.req.Context.Dir != "" {
		projectDir = b.s.req.Context.Dir
	}
	projectID, err := client.FindProject(b.s.project, projectDir)
	if err != nil {
		return nil, nil, fmt.Errorf("sdk: %w", err)
	}
	if b.s.uploaded != "" {
		return b.executeUploaded(ctx, projectID)
	}
	return b.executeLocal(ctx, projectID)
}

// executeLocal runs a directory or tar context's build from this process,
// as `kiln build --save` does: the builder is asked for through kiln's
// API, the context is sent from here, and the builder pushes the image to
// kiln's registry (and to the Builder's reference).
func (b *Builder) executeLocal(ctx context.Context, projectID string) (v1.ImageIndex, *Metadata, error) {
	tmp, err := os.MkdirTemp("", "kiln-sdk-")
	if err != nil {
		return nil, nil, fmt.Errorf("sdk: %w", err)
	}
	defer os.RemoveAll(tmp)
	r, err := b.request(tmp)
	if err != nil {
		return nil, nil, err
	}
	req, err := prepare(r)
	if err != nil {
		return nil, nil, fmt.Errorf("sdk: %w", err)
	}
	defer req.Close()

	opts := &cliv1.BuildOptions{Command: cliv1.Command_COMMAND_BUILD, Save: true, Push: b.ref != nil}
	if b.ref != nil {
		opts.Tags = []string{b.ref.String()}
	}
	depotext.SetSaveTags(opts, b.s.tags)
	remote, err := session.Create(ctx, b.cfg, projectID, opts)
	if err != nil {
		return nil, nil, fmt.Errorf("sdk: %w", err)
	}
	md := &Metadata{BuildID: remote.ID, ProjectID: projectID}
	if len(remote.SaveRefs) == 0 {
		err := errors.New("sdk: the server did not say where to save the image (it has no registry, or is not a kiln server)")
		remote.Finish(err)
		return nil, md, err
	}
	if err := req.AddSave(remote.SaveRefs, remote.SaveCreds); err != nil {
		remote.Finish(err)
		return nil, md, fmt.Errorf("sdk: %w", err)
	}

	p := newProgress(b.s.progress)
	resp, runErr := remote.Run(ctx, req, session.RunOptions{Wait: b.s.wait, Tap: p.tap})
	finishErr := remote.Finish(runErr)
	md.Steps = p.steps()
	if runErr != nil {
		return nil, md, &BuildError{BuildID: remote.ID, ProjectID: projectID, Step: p.failedStep(), Err: runErr}
	}
	if finishErr != nil {
		// What kiln recorded wins: it canceled or failed the build.
		return nil, md, fmt.Errorf("sdk: %w", finishErr)
	}
	md.Refs = append(md.Refs, remote.SaveRefs...)
	if b.ref != nil {
		md.Refs = append(md.Refs, b.ref.String())
	}
	if md.BuildxMetadata, err = buildxMetadata(resp, projectID, remote.ID); err != nil {
		return nil, md, err
	}
	idx, digest, err := readIndex(ctx, b.cfg, remote.ID)
	if err != nil {
		return nil, md, err
	}
	md.Digest = digest
	return idx, md, nil
}

// request is the build to run for a directory or tar context: the
// options' request with its outputs and SSH keys. Keys are written to
// tmp, each in a file only this user can read.
func (b *Builder) request(tmp string) (buildreq.Request, error) {
	r := b.s.req
	r.SSH = nil
	for i, id := range slices.Sorted(maps.Keys(b.s.sshKeys)) {
		p := filepath.Join(tmp, fmt.Sprintf("ssh-%d", i))
		if err := os.WriteFile(p, b.s.sshKeys[id], 0o600); err != nil {
			return r, fmt.Errorf("sdk: SSH key %q: %w", id, err)
		}
		r.SSH = append(r.SSH, buildreq.SSH{ID: id, Paths: []string{p}})
	}
	if b.ref != nil {
		attrs := map[string]string{"name": b.ref.String(), "push": "true"}
		if engine.IsLoopbackHost(b.ref.Context().RegistryStr()) {
			attrs["registry.insecure"] = "true" // loopback registries speak plain HTTP
		}
		r.Outputs = append(r.Outputs, buildreq.Output{Type: "image", Attrs: attrs})
	}
	r.CacheFrom, r.CacheTo = slices.Clone(r.CacheFrom), slices.Clone(r.CacheTo)
	for i, c := range r.CacheFrom {
		r.CacheFrom[i] = insecureOnLoopback(c)
	}
	for i, c := range r.CacheTo {
		r.CacheTo[i] = insecureOnLoopback(c)
	}
	return r, nil
}

// insecureOnLoopback lets a registry cache on this machine be reached
// over plain HTTP, as loopback registries serve.
func insecureOnLoopback(c buildreq.Cache) buildreq.Cache {
	ref, err := name.ParseReference(c.Attrs["ref"])
	if err != nil || !engine.IsLoopbackHost(ref.Context().RegistryStr()) {
		return c
	}
	attrs := map[string]string{"registry.insecure": "true"}
	for k, v := range c.Attrs {
		attrs[k] = v
	}
	return buildreq.Cache{Type: c.Type, Attrs: attrs}
}
