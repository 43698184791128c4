package sdk_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/http/httptest"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/kiln-dev/kiln/sdk"
)

// These examples run against a real kiln server (see TestMain): like any
// program, they find it through KILN_API_URL, KILN_TOKEN and
// KILN_PROJECT_ID.

// Build a directory and read the image kiln built.
func Example() {
	b, err := sdk.NewBuilder(nil, sdk.WithContextDir("testdata/hello"), sdk.WithPlatforms("linux/amd64"))
	if err != nil {
		log.Fatal(err)
	}
	idx, md, err := b.Execute(context.Background())
	if err != nil {
		log.Fatal(err)
	}

	// The index holds the image (and, after it, its attestations).
	im, err := idx.IndexManifest()
	if err != nil {
		log.Fatal(err)
	}
	img, err := idx.Image(im.Manifests[0].Digest)
	if err != nil {
		log.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("title:", cf.Config.Labels["org.opencontainers.image.title"])
	fmt.Println("platform:", im.Manifests[0].Platform)
	fmt.Println("saved under its build id:", strings.HasSuffix(md.Refs[0], ":"+md.BuildID))
	// Output:
	// title: hello
	// platform: linux/amd64
	// saved under its build id: true
}

// Copy the built image to another registry with go-containerregistry.
// (To have kiln's builder push it there as it builds, give NewBuilder the
// reference instead.)
func Example_copy() {
	// A registry to copy to; in real life, your registry.
	reg := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer reg.Close()
	dst, err := name.ParseReference(strings.TrimPrefix(reg.URL, "http://") + "/apps/hello:1.0")
	if err != nil {
		log.Fatal(err)
	}

	b, err := sdk.NewBuilder(nil, sdk.WithContextDir("testdata/hello"), sdk.WithTags("1.0"))
	if err != nil {
		log.Fatal(err)
	}
	idx, md, err := b.Execute(context.Background())
	if err != nil {
		log.Fatal(err)
	}
	if err := remote.WriteIndex(dst, idx); err != nil { // add remote.WithAuthFromKeychain(authn.DefaultKeychain) for a real registry
		log.Fatal(err)
	}
	desc, err := remote.Head(dst)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("same image:", desc.Digest == md.Digest)
	// Output:
	// same image: true
}

// Follow a build's steps as they run.
func ExampleWithProgress() {
	progress := sdk.WithProgress(func(e sdk.Event) {
		if !strings.Contains(e.Step.Name, "COPY") {
			return
		}
		switch e.Type {
		case sdk.StepCompleted, sdk.StepCached: // cached when an earlier build did the same
			fmt.Println("done:", e.Step.Name)
		case sdk.StepFailed:
			fmt.Println("failed:", e.Step.Name, e.Step.Error)
		}
	})
	b, err := sdk.NewBuilder(nil, sdk.WithContextDir("testdata/hello"), progress)
	if err != nil {
		log.Fatal(err)
	}
	if _, _, err := b.Execute(context.Background()); err != nil {
		log.Fatal(err)
	}
	// Output:
	// done: [1/1] COPY hello.txt /
}

// Options are checked by NewBuilder, before anything talks to kiln.
func ExampleNewBuilder_invalid() {
	_, err := sdk.NewBuilder(nil, sdk.WithContextDir("."), sdk.WithSecret("", "hunter2"))
	fmt.Println(err)
	// Output:
	// sdk: WithSecret: empty id: invalid argument
}
