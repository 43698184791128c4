// Package sdk builds container images through kiln from a Go program: the
// library a platform embeds where it would otherwise run `docker buildx
// build` or write its own BuildKit driver. A [Builder] is one build; its
// [Builder.Execute] returns the built image as an OCI image index
// (go-containerregistry's [v1.ImageIndex]) and the build's [Metadata].
//
// # Install
//
//	go get github.com/kiln-dev/kiln/sdk
//
// The package imports no kiln server code and needs no Docker engine: the
// build runs on the project's builders on the kiln server, and this
// process sends the context and reads the result.
//
// # Authenticate
//
// A Builder finds its server, token and project where the kiln CLI does,
// so a program run where `kiln build` works needs no configuration:
//
//   - the server and token: [WithServer], else KILN_API_URL and KILN_TOKEN
//     (or DEPOT_API_URL and DEPOT_TOKEN), else the file `kiln login` writes;
//   - the project: [WithProject], else KILN_PROJECT_ID (or
//     DEPOT_PROJECT_ID), else a kiln.json holding {"id": "..."} in the
//     context directory or above it.
//
// A platform building for its customers typically mints one project token
// per customer project (`kiln tokens create`) and passes it with
// WithServer and WithProject.
//
// # Build a directory
//
//	b, err := sdk.NewBuilder(nil,
//		sdk.WithContextDir("./app"),
//		sdk.WithBuildArg("VERSION", "1.2.3"),
//		sdk.WithSecret("npm", npmToken),
//		sdk.WithTags("1.2.3"),
//	)
//	if err != nil {
//		return err // a bad option: nothing was sent anywhere
//	}
//	idx, md, err := b.Execute(ctx)
//
// The directory is sent incrementally, honouring .dockerignore, and the
// project's layer cache persists on its builder, so a rebuild sends and
// runs only what changed. The other contexts are a tar archive
// ([WithContextTar]) and a context already uploaded to kiln
// ([WithUploadedContext], [UploadContext]), which kiln builds by itself on
// the server.
//
// Every build is saved in kiln's registry as <registry>/<project>:<build
// id>, and under each [WithTags] tag: `kiln pull BUILD_ID` and `kiln push
// BUILD_ID` work on it like on any `kiln build --save`.
//
// # Read the index
//
// The index is read from kiln's registry as go-containerregistry reads any
// remote index, lazily: manifests, configs and layers are fetched when
// asked for.
//
//	im, _ := idx.IndexManifest()
//	for _, m := range im.Manifests {
//		if m.Platform == nil || m.Platform.Architecture == "unknown" {
//			continue // an attestation (provenance) manifest
//		}
//		img, _ := idx.Image(m.Digest)
//		cf, _ := img.ConfigFile()
//		fmt.Println(m.Platform, cf.Config.Labels)
//	}
//
// A single-platform image that was pushed as a plain manifest is returned
// wrapped in an index of one, so callers handle one shape.
//
// # Push it elsewhere
//
// Give NewBuilder a reference and kiln's builder pushes the image there as
// it exports it, with the Docker credentials of the user running the
// program (as `kiln build --push` does):
//
//	ref, _ := name.ParseReference("registry.example.com/team/app:1.2.3")
//	b, err := sdk.NewBuilder(ref, sdk.WithContextDir("./app"))
//
// Or copy the result yourself, anywhere go-containerregistry can write:
//
//	err := remote.WriteIndex(ref, idx, remote.WithAuthFromKeychain(authn.DefaultKeychain))
//
// # Progress
//
// [WithProgress] receives the build's events ([Event]): each step as it starts,
// and then completes, comes from the cache or fails, and the lines its
// commands print. Execute's [Metadata] lists the same steps with their
// durations, and a failed build's [*BuildError] names the step that
// failed:
//
//	_, md, err := b.Execute(ctx)
//	var be *sdk.BuildError
//	if errors.As(err, &be) {
//		log.Printf("build %s failed at %s", be.BuildID, be.Step)
//	}
//
// # Compatibility
//
// The package is versioned with the module (see [Version]): semantic
// versioning, nothing exported removed or changed within a major version.
// Options are values of a sealed interface, so new ones can be added
// without breaking anyone.
package sdk
