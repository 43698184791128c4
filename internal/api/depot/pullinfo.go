package depot

import (
	"context"
	"encoding/json"

	"connectrpc.com/connect"
	cliv1 "github.com/depot/depot-go/proto/depot/cli/v1"

	cliv1extra "github.com/kiln-dev/kiln/gen/depot/cli/v1"
	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/build"
	"github.com/kiln-dev/kiln/internal/depotext"
	"github.com/kiln-dev/kiln/internal/project"
)

// GetPullInfo is depot.cli.v1.BuildService/GetPullInfo (missing from
// depot-go): where a build's saved image is and credentials to pull it —
// the reference <registry host>/<project id>:<build id>, user "x-token" and
// a fresh pull token that reads only this build's image (registry
// read-only, 1 h; see the registry's buildscope.go: the tags <build id>
// and <build id>-<bake target>, and what they reference). Any caller that
// may use the build gets it, its own build token included.
//
// It answers whether or not the build was saved (or its image has expired):
// the registry is the authority on that, and a pull of a missing image
// fails there with "manifest unknown". The depot CLI asks for it right
// after CreateBuild, before it builds, when CreateBuild told it to load
// through the registry (save.go's loadRequest). save_for_load says the
// build was saved only for that: it asked for --load and not --save.
func (s *CLIBuildService) GetPullInfo(ctx context.Context, req *connect.Request[cliv1extra.GetPullInfoRequest]) (*connect.Response[cliv1extra.GetPullInfoResponse], error) {
	p, err := Caller(ctx)
	if err != nil {
		return nil, err
	}
	b, err := s.Builds.Get(ctx, p, req.Msg.BuildId)
	if err != nil {
		return nil, s.err(ctx, err)
	}
	if err := s.Builds.CheckSave(nil); err != nil { // the server has a registry
		return nil, s.err(ctx, err)
	}
	_, secret, err := s.Projects.MintToken(ctx, p, project.Mint{Kind: auth.TokenPull, ProjectID: b.ProjectID, BuildID: b.ID,
		Description: "pull token (GetPullInfo " + b.ID + ")", TTL: pullTokenTTL})
	if err != nil {
		return nil, s.err(ctx, err)
	}
	opts := storedOptions(b)
	return connect.NewResponse(&cliv1extra.GetPullInfoResponse{
		Reference:   s.Builds.SavedRef(b),
		Username:    registryUser,
		Password:    secret,
		Options:     opts,
		SaveForLoad: saveForLoad(opts),
	}), nil
}

// storedOptions are the BuildOptions the client sent at CreateBuild, as
// the build record keeps them (depotext.Options), unknown fields and all;
// none for builds created without (depot.build.v1) or with options of
// another shape.
func storedOptions(b build.Build) []*cliv1.BuildOptions {
	var opts depotext.Options
	if json.Unmarshal([]byte(b.Options), &opts) != nil {
		return nil
	}
	return opts
}

// saveForLoad: the build asked for --load and not for --save, so its image
// is in the registry only for the client to load it.
func saveForLoad(opts []*cliv1.BuildOptions) bool {
	save, _ := saveRequest(opts)
	return !save && loadRequest(opts)
}
