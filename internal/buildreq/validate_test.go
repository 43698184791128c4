package buildreq

import (
	"errors"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/platform"
)

// A request made by a producer other than the flags (bake, the runner, the
// SDK) is checked as thoroughly, with messages that name the field.
func TestValidate(t *testing.T) {
	ok := func() Request { return Request{Context: Context{Dir: "."}} }
	if err := ok().Validate(); err != nil {
		t.Fatalf("minimal request: %v", err)
	}
	full := ok()
	full.Tags = []string{"app:1"}
	full.Platforms = []platform.Platform{platform.AMD64, platform.ARM64}
	full.BuildPlatform = platform.ARM64
	full.Outputs = []Output{{Type: OutputImage, Attrs: map[string]string{"push": "true"}}}
	full.CacheFrom = []Cache{{Type: "gha"}, {Type: CacheRegistry, Attrs: map[string]string{"ref": "r/c"}}}
	full.Secrets = []Secret{{ID: "a", Value: []byte{}}, {ID: "b", Env: "B"}}
	full.NamedContexts = map[string]NamedContext{"base": {Image: "busybox"}}
	full.Lint = &Lint{FailOn: LintFailOnWarn}
	if err := full.Validate(); err != nil {
		t.Fatalf("full request: %v", err)
	}

	arm7 := platform.Platform{OS: "linux", Arch: "arm", Variant: "v7"}
	riscv := platform.Platform{OS: "linux", Arch: "riscv64"}
	cases := []struct {
		name string
		mod  func(r *Request)
		want string
	}{
		{"no context", func(r *Request) { r.Context = Context{} }, "build context"},
		{"two contexts", func(r *Request) { r.Context.Tar = strings.NewReader("") }, "not both"},
		{"two dockerfiles", func(r *Request) { r.Dockerfile = Dockerfile{Path: "D", Inline: []byte("FROM x")} }, "not both"},
		{"bad tag", func(r *Request) { r.Tags = []string{"Bad/Name"} }, `tag "Bad/Name"`},
		{"bad arg", func(r *Request) { r.Args = map[string]string{" A": "1"} }, `build arg " A"`},
		{"bad target", func(r *Request) { r.Target = "a b" }, `target "a b"`},
		{"bad network", func(r *Request) { r.Network = "host" }, `network "host"`},
		{"no builder", func(r *Request) { r.Platforms = []platform.Platform{riscv} }, "no kiln builder or emulator runs linux/riscv64"},
		{"build platform", func(r *Request) { r.BuildPlatform = arm7 }, "build platform linux/arm/v7"},
		{"docker manifest list", func(r *Request) {
			r.Platforms = []platform.Platform{platform.AMD64, platform.ARM64}
			r.Outputs = []Output{{Type: OutputDocker}}
		}, "manifest lists"},
		{"unknown output", func(r *Request) { r.Outputs = []Output{{Type: "bogus", Dest: "x"}} }, `unknown output type "bogus"`},
		{"push without name", func(r *Request) { r.Outputs = []Output{{Type: OutputImage, Attrs: map[string]string{"push": "true"}}} }, "a tag is needed"},
		{"bad compression", func(r *Request) {
			r.Outputs = []Output{{Type: OutputImage, Attrs: map[string]string{"name": "x", "compression": "lz4"}}}
		}, `-o "type=image,compression=lz4,name=x": unknown compression "lz4"`},
		{"cache inline import", func(r *Request) { r.CacheFrom = []Cache{{Type: CacheInline}} }, "only for --cache-to"},
		{"attest twice", func(r *Request) { r.Attests = []Attest{{Type: AttestSBOM}, {Type: AttestSBOM}} }, "more than once"},
		{"attest unknown", func(r *Request) { r.Attests = []Attest{{Type: "vex"}} }, `unknown attestation type "vex"`},
		{"call unknown", func(r *Request) { r.Call = Call{Method: "explain"} }, `unknown method "explain"`},
		{"lint and call", func(r *Request) { r.Call, r.Lint = Call{Method: "check"}, &Lint{} }, "--lint and --call=check"},
		{"secret without source", func(r *Request) { r.Secrets = []Secret{{ID: "a"}} }, `secret "a": give exactly one`},
		{"secret twice", func(r *Request) { r.Secrets = []Secret{{ID: "a", Env: "A"}, {ID: "a", Value: []byte("x")}} }, "duplicate"},
		{"ssh without id", func(r *Request) { r.SSH = []SSH{{}} }, "ssh: missing id"},
		{"context two kinds", func(r *Request) { r.NamedContexts = map[string]NamedContext{"b": {Dir: ".", Image: "x"}} }, "exactly one"},
		{"context name", func(r *Request) { r.NamedContexts = map[string]NamedContext{"docker.io/library/alpine": {Image: "x"}} }, "invalid name"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := ok()
			tc.mod(&r)
			err := r.Validate()
			if err == nil || !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Validate = %v, want an invalid-argument error containing %q", err, tc.want)
			}
		})
	}
}

// Bake's outputs and contexts are read the way -o and --build-context are.
func TestNewOutputAndNamedContext(t *testing.T) {
	o, err := NewOutput("registry", "", nil)
	if err != nil || o.Type != OutputImage || !o.IsPush() {
		t.Errorf("registry = %+v, %v", o, err)
	}
	if o, err := NewOutput("cacheonly", "", nil); o != nil || err != nil {
		t.Errorf("cacheonly = %+v, %v", o, err)
	}
	if o, err := NewOutput("oci", "", nil); err != nil || o.Dest != "-" {
		t.Errorf("oci without dest = %+v, %v", o, err)
	}
	if _, err := NewOutput("registry", "", map[string]string{"push": "false"}); err == nil {
		t.Error("type=registry,push=false accepted")
	}
	for v, want := range map[string]NamedContext{
		"docker-image://busybox:1":  {Image: "busybox:1"},
		"oci-layout:///l:v1":        {OCILayout: "/l:v1"},
		"https://example.com/x.git": {URL: "https://example.com/x.git"},
		"git@github.com:o/r.git":    {URL: "git@github.com:o/r.git"},
		"../other":                  {Dir: "../other"},
	} {
		if got, err := NamedContextOf(v); err != nil || got != want {
			t.Errorf("NamedContextOf(%q) = %+v, %v; want %+v", v, got, err, want)
		}
	}
	if _, err := NamedContextOf("target:app"); err == nil {
		t.Error("target: context accepted")
	}
}
