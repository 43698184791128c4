package buildreq

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/kilntest"
	"github.com/kiln-dev/kiln/internal/platform"
)

func TestParseFlagsInvalid(t *testing.T) {
	ctxDir := kilntest.Context(t)
	notDir := filepath.Join(ctxDir, "Dockerfile")
	t.Setenv("KILN_TEST_UNSET_SECRET", "")
	os.Unsetenv("KILN_TEST_UNSET_SECRET")

	cases := []struct {
		name string
		mod  func(o *Flags)
		want []string // substrings of the error
	}{
		{"no context", func(o *Flags) { o.ContextPath = "" }, []string{"build context"}},
		{"stdin twice", func(o *Flags) { o.ContextPath, o.Dockerfile, o.Stdin = "-", "-", strings.NewReader("x") }, []string{"-f \"-\""}},
		{"stdin context without stdin", func(o *Flags) { o.ContextPath = "-" }, []string{"build context \"-\"", "stdin"}},
		{"bad tag", func(o *Flags) { o.Tags = []string{"ok:1", "Bad/Name"} }, []string{`-t "Bad/Name"`, "lowercase"}},
		{"empty tag", func(o *Flags) { o.Tags = []string{""} }, []string{`-t ""`}},
		{"tag with bad chars", func(o *Flags) { o.Tags = []string{"foo bar"} }, []string{`-t "foo bar"`}},
		{"build-arg no name", func(o *Flags) { o.BuildArgs = []string{"=v"} }, []string{`--build-arg "=v"`}},
		{"label no name", func(o *Flags) { o.Labels = []string{"=v"} }, []string{`--label "=v"`}},
		{"secret bare", func(o *Flags) { o.Secrets = []string{"foo"} }, []string{`--secret "foo": missing id=`}},
		{"secret no id", func(o *Flags) { o.Secrets = []string{"src=/etc/hostname"} }, []string{`--secret "src=/etc/hostname": missing id=`}},
		{"secret bad type", func(o *Flags) { o.Secrets = []string{"id=a,type=ssh"} }, []string{`--secret "id=a,type=ssh"`, `unsupported type "ssh"`}},
		{"secret unknown key", func(o *Flags) { o.Secrets = []string{"id=a,foo=b"} }, []string{`--secret "id=a,foo=b"`, `unknown key "foo"`}},
		{"secret missing file", func(o *Flags) { o.Secrets = []string{"id=a,src=/nonexistent/kiln"} }, []string{`--secret "id=a,src=/nonexistent/kiln"`, "/nonexistent/kiln"}},
		{"secret id only, no env no file", func(o *Flags) { o.Secrets = []string{"id=KILN_TEST_UNSET_SECRET"} }, []string{`--secret "id=KILN_TEST_UNSET_SECRET"`}},
		{"secret both", func(o *Flags) { o.Secrets = []string{"id=a,src=/etc/hostname,env=HOME"} }, []string{`--secret "id=a,src=/etc/hostname,env=HOME"`, "not both"}},
		{"secret dup", func(o *Flags) { o.Secrets = []string{"id=a,env=HOME", "id=a,env=PATH"} }, []string{`--secret "id=a,env=PATH"`, "duplicate"}},
		{"secret bad csv", func(o *Flags) { o.Secrets = []string{`id="a`} }, []string{`--secret "id=\"a"`}},
		{"ssh empty id", func(o *Flags) { o.SSH = []string{"=/tmp/x"} }, []string{`--ssh "=/tmp/x"`}},
		{"ssh missing key", func(o *Flags) { o.SSH = []string{"gh=/nonexistent/key"} }, []string{`--ssh "gh=/nonexistent/key"`}},
		{"ssh not a key", func(o *Flags) { o.SSH = []string{"gh=" + notDir} }, []string{`--ssh "gh=` + notDir + `"`}},
		{"ssh empty path", func(o *Flags) { o.SSH = []string{"gh="} }, []string{`--ssh "gh="`, "empty path"}},
		{"no-cache-filter empty", func(o *Flags) { o.NoCacheFilter = []string{""} }, []string{`--no-cache-filter ""`}},
		{"build-context no value", func(o *Flags) { o.BuildContexts = []string{"base"} }, []string{`--build-context "base"`}},
		{"build-context bad name", func(o *Flags) { o.BuildContexts = []string{"Bad Name=" + ctxDir} }, []string{`--build-context "Bad Name=`, "invalid name"}},
		{"build-context target", func(o *Flags) { o.BuildContexts = []string{"base=target:foo"} }, []string{`--build-context "base=target:foo"`, "bake"}},
		{"build-context bad image", func(o *Flags) { o.BuildContexts = []string{"base=docker-image://Foo:bar:baz"} }, []string{`--build-context "base=docker-image://Foo:bar:baz"`}},
		{"build-context dup", func(o *Flags) {
			o.BuildContexts = []string{"alpine=docker-image://alpine", "docker.io/library/alpine:latest=docker-image://busybox"}
		}, []string{`--build-context "docker.io/library/alpine:latest=docker-image://busybox"`, "more than once"}},
		{"network host", func(o *Flags) { o.Network = "host" }, []string{`--network "host"`}},
		{"network bogus", func(o *Flags) { o.Network = "bridge0" }, []string{`--network "bridge0"`}},
		{"platform no builder", func(o *Flags) { o.Platform = "linux/amd64,linux/riscv64" }, []string{`--platform "linux/amd64,linux/riscv64"`, "no kiln builder or emulator runs linux/riscv64"}},
		{"bad platform", func(o *Flags) { o.Platform = "linux/amd64/v9/x" }, []string{`--platform "linux/amd64/v9/x"`}},
		{"two outputs to stdout", func(o *Flags) { o.Outputs = []string{"type=oci", "type=tar,dest=-"}; o.Stdout = &bytes.Buffer{} }, []string{"-o", "only one output can be written to stdout"}},
		{"output unknown type", func(o *Flags) { o.Outputs = []string{"type=foo,dest=x"} }, []string{`-o "type=foo,dest=x"`, `unknown output type "foo"`, "local, tar, oci, docker, image, registry"}},
		{"output registry without name", func(o *Flags) { o.Outputs = []string{"type=registry"} }, []string{`-o "type=registry"`, "a tag is needed when pushing"}},
		{"output no type", func(o *Flags) { o.Outputs = []string{"dest=x"} }, []string{`-o "dest=x"`, "missing type="}},
		{"output no dest, no stdout", func(o *Flags) { o.Outputs = []string{"type=tar"} }, []string{`-o "type=tar"`, "stdout"}},
		{"output local no dest", func(o *Flags) { o.Outputs = []string{"type=local"} }, []string{`-o "type=local"`, "missing dest="}},
		{"output bad field", func(o *Flags) { o.Outputs = []string{"type=tar,foo"} }, []string{`-o "type=tar,foo"`, `field "foo"`}},
		{"output local stdout", func(o *Flags) { o.Outputs = []string{"type=local,dest=-"} }, []string{`-o "type=local,dest=-"`}},
		{"output stdout without writer", func(o *Flags) { o.Outputs = []string{"type=tar,dest=-"} }, []string{`-o "type=tar,dest=-"`, "stdout"}},
		{"target", func(o *Flags) { o.Target = "a b" }, []string{`--target "a b"`}},
	}
	for _, tc := range cases {
		checkInvalid(t, tc.name, Flags{ContextPath: ctxDir}, tc.mod, tc.want)
	}
}

func TestParseFlagsInvalidBuildx(t *testing.T) {
	ctxDir := kilntest.Context(t)
	cases := []struct {
		name string
		mod  func(o *Flags)
		want []string
	}{
		{"push without tag", func(o *Flags) { o.Push = true }, []string{"--push", "a tag is needed"}},
		{"image push without name", func(o *Flags) { o.Outputs = []string{"type=image,push=true"} }, []string{`-o "type=image,push=true"`, "a tag is needed"}},
		{"registry push=false", func(o *Flags) { o.Outputs = []string{"type=registry,name=r/x,push=false"} }, []string{"type=registry always pushes"}},
		{"image with dest", func(o *Flags) { o.Outputs = []string{"type=image,name=x,dest=/tmp/x"} }, []string{"takes name="}},
		{"empty dest", func(o *Flags) { o.Outputs = []string{"type=oci,dest="} }, []string{"empty dest="}},
		{"bad compression", func(o *Flags) { o.Tags = []string{"x"}; o.Outputs = []string{"type=registry,compression=lz4"} }, []string{`unknown compression "lz4"`, "gzip, estargz, zstd"}},
		{"compression level not int", func(o *Flags) { o.Outputs = []string{"type=image,name=x,compression=zstd,compression-level=high"} }, []string{`compression-level="high"`}},
		{"compression level range", func(o *Flags) { o.Outputs = []string{"type=image,name=x,compression=gzip,compression-level=12"} }, []string{"out of range for gzip (0-9)"}},
		{"zstd level range", func(o *Flags) { o.Outputs = []string{"type=image,name=x,compression=zstd,compression-level=23"} }, []string{"out of range for zstd"}},
		{"level without compression", func(o *Flags) {
			o.Outputs = []string{"type=image,name=x,compression=uncompressed,compression-level=1"}
		}, []string{"does not apply"}},
		{"bad bool", func(o *Flags) { o.Outputs = []string{"type=image,name=x,push=yes-please"} }, []string{`push="yes-please"`, "not a boolean"}},
		{"bad force-compression", func(o *Flags) { o.Outputs = []string{"type=image,name=x,force-compression=2"} }, []string{"force-compression"}},
		{"bad oci-mediatypes", func(o *Flags) { o.Outputs = []string{"type=image,name=x,oci-mediatypes=maybe"} }, []string{"oci-mediatypes"}},
		{"bad insecure", func(o *Flags) { o.Outputs = []string{"type=image,name=x,registry.insecure=0x1"} }, []string{"registry.insecure"}},
		{"bad name", func(o *Flags) { o.Outputs = []string{"type=image,name=UPPER/Case"} }, []string{`name "UPPER/Case"`}},
		{"empty name in list", func(o *Flags) { o.Outputs = []string{`type=image,"name=a,,b"`} }, []string{"empty image name"}},
		{"name on local", func(o *Flags) { o.Outputs = []string{"type=local,dest=x,name=y"} }, []string{"name= only applies"}},
		{"duplicate attr", func(o *Flags) { o.Outputs = []string{"type=image,name=x,name=y"} }, []string{"name= given more than once"}},
		{"unterminated quote", func(o *Flags) { o.Outputs = []string{`type=image,"name=x`} }, []string{"-o"}},
		{"two loads", func(o *Flags) { o.Outputs = []string{"type=docker", "type=docker,name=x"} }, []string{"only one output can load"}},
		{"two OCI layout dirs", func(o *Flags) { o.Outputs = []string{"type=oci,dest=a,tar=false", "type=oci,dest=b,tar=false"} }, []string{"only one OCI layout directory"}},
		{"oci layout to stdout", func(o *Flags) { o.Outputs = []string{"type=oci,tar=false"} }, []string{"tar=false writes a directory"}},
		{"load layout dir", func(o *Flags) { o.Outputs = []string{"type=docker,tar=false"} }, []string{"tar=false writes a directory"}},

		{"provenance bad value", func(o *Flags) { o.Provenance = "everything" }, []string{`--provenance "everything"`, `field "everything" is not key=value`}},
		{"provenance bad mode", func(o *Flags) { o.Provenance = "mode=full" }, []string{`--provenance "mode=full"`, `unknown provenance mode "full"`}},
		{"sbom bad generator", func(o *Flags) { o.SBOM = "generator=Not An Image" }, []string{`--sbom "generator=Not An Image"`, "not an image reference"}},
		{"attest no type", func(o *Flags) { o.Attests = []string{"mode=max"} }, []string{`--attest "mode=max"`, "missing type="}},
		{"attest unknown type", func(o *Flags) { o.Attests = []string{"type=vex"} }, []string{`unknown attestation type "vex"`}},
		{"attest bad disabled", func(o *Flags) { o.Attests = []string{"type=sbom,disabled=nah"} }, []string{`disabled="nah"`}},
		{"attest twice", func(o *Flags) { o.Attests = []string{"type=provenance"}; o.Provenance = "false" }, []string{`--provenance "false"`, "more than once"}},

		{"cache-to no type", func(o *Flags) { o.CacheTo = []string{"ref=x,mode=max"} }, []string{`--cache-to "ref=x,mode=max"`, "missing type="}},
		{"cache-to unknown type", func(o *Flags) { o.CacheTo = []string{"type=redis,ref=x"} }, []string{`unknown cache type "redis"`}},
		{"cache-to registry no ref", func(o *Flags) { o.CacheTo = []string{"type=registry,mode=max"} }, []string{"needs ref="}},
		{"cache-to bad mode", func(o *Flags) { o.CacheTo = []string{"type=registry,ref=r/c,mode=all"} }, []string{`unknown mode "all"`}},
		{"cache-to bad ref", func(o *Flags) { o.CacheTo = []string{"type=registry,ref=Bad Ref"} }, []string{`ref "Bad Ref"`}},
		{"cache-from bad bare ref", func(o *Flags) { o.CacheFrom = []string{"UPPER"} }, []string{`--cache-from "UPPER"`}},
		{"cache-from inline", func(o *Flags) { o.CacheFrom = []string{"type=inline"} }, []string{"only for --cache-to"}},
		{"cache-to bad bool", func(o *Flags) { o.CacheTo = []string{"type=registry,ref=r/c,image-manifest=sure"} }, []string{"image-manifest"}},
		{"cache-to bad field", func(o *Flags) { o.CacheTo = []string{"type=registry,ref"} }, []string{`field "ref" is not key=value`}},

		{"call unknown", func(o *Flags) { o.Call = "explain" }, []string{`--call "explain"`, `unknown method "explain"`}},
		{"call two methods", func(o *Flags) { o.Call = "check,outline" }, []string{"more than one method"}},
		{"call bad format", func(o *Flags) { o.Call = "outline,format=yaml" }, []string{`unknown format "yaml"`}},
		{"call bad field", func(o *Flags) { o.Call = "check,verbose=1" }, []string{`unknown field "verbose"`}},
		{"call no method", func(o *Flags) { o.Call = "format=json" }, []string{"missing method"}},
		{"call and lint", func(o *Flags) { o.Call = "check"; o.Lint = true }, []string{"--lint and --call=check"}},
		{"lint level", func(o *Flags) { o.Lint = true; o.LintFailOn = "info" }, []string{`--lint-fail-on "info"`}},
	}
	for _, tc := range cases {
		checkInvalid(t, tc.name, Flags{ContextPath: ctxDir, Stdout: &bytes.Buffer{}}, tc.mod, tc.want)
	}
}

// checkInvalid runs ParseFlags on base changed by mod and checks that it
// fails with an invalid-argument error containing every string of want.
func checkInvalid(t *testing.T, name string, base Flags, mod func(*Flags), want []string) {
	t.Run(name, func(t *testing.T) {
		o := base
		mod(&o)
		_, err := ParseFlags(o)
		if err == nil {
			t.Fatal("ParseFlags succeeded; want an error")
		}
		if !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("error %q does not wrap ErrInvalid", err)
		}
		for _, w := range want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("error %q does not contain %q", err, w)
			}
		}
	})
}

func TestParsePlatforms(t *testing.T) {
	cases := []struct {
		in   string
		want []string
	}{
		{"", nil},
		{"  ", nil},
		{"linux/amd64", []string{"linux/amd64"}},
		{"linux/amd64,linux/arm64", []string{"linux/amd64", "linux/arm64"}},
		{"linux/arm64, linux/amd64", []string{"linux/arm64", "linux/amd64"}},
		{"arm64", []string{"linux/arm64"}},
		{"linux/aarch64,linux/x86_64", []string{"linux/arm64", "linux/amd64"}},
		{"linux/amd64,amd64,linux/amd64", []string{"linux/amd64"}},
		{"linux/arm64/v8", []string{"linux/arm64"}},
		{"linux/arm", []string{"linux/arm/v7"}},
		{"linux/arm/v6,linux/386", []string{"linux/arm/v6", "linux/386"}},
		{"LINUX/AMD64", []string{"linux/amd64"}},
	}
	for _, c := range cases {
		req, err := ParseFlags(Flags{ContextPath: ".", Platform: c.in})
		got := platform.Strings(req.Platforms)
		if err != nil {
			t.Errorf("--platform %q: %v", c.in, err)
			continue
		}
		if !slices.Equal(got, c.want) && len(got)+len(c.want) > 0 {
			t.Errorf("--platform %q = %q, want %q", c.in, got, c.want)
		}
	}
}

func TestParsePlatformsInvalid(t *testing.T) {
	cases := []struct{ in, want string }{
		{"linux/amd64,", "empty platform"},
		{",linux/amd64", "empty platform"},
		{"linux/amd64,,linux/arm64", "empty platform"},
		{"linux/riscv64", "no kiln builder or emulator runs linux/riscv64"},
		{"linux/amd64,linux/s390x", "no kiln builder or emulator runs linux/s390x"},
		{"windows/amd64", "no kiln builder or emulator runs windows/amd64"},
		{"darwin/arm64", "no kiln builder or emulator runs darwin/arm64"},
		{"linux/amd64/v9/x", "not a valid platform"},
		{"linux/*", "not a valid platform"},
		{"linux/amd 64", "not a valid platform"},
		{"../../etc", "not a valid platform"},
		{"linux/amd64\x00", "not a valid platform"},
		{strings.Repeat("linux/amd64/", 200), "not a valid platform"},
	}
	for _, c := range cases {
		_, err := ParseFlags(Flags{ContextPath: ".", Platform: c.in})
		if err == nil {
			t.Errorf("--platform %q succeeded, want an error containing %q", c.in, c.want)
			continue
		}
		if !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("--platform %q: %v does not wrap ErrInvalid", c.in, err)
		}
		if !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "--platform") {
			t.Errorf("--platform %q = %q, want --platform and %q", c.in, err, c.want)
		}
	}
}

func TestParseCall(t *testing.T) {
	for in, want := range map[string]Call{
		"":                                 {},
		"build":                            {},
		"check":                            {Method: "check"},
		"lint":                             {Method: "check"},
		"outline":                          {Method: "outline"},
		"targets,format=json":              {Method: "targets", Format: "json"},
		"check,format=text":                {Method: "check"},
		"check,ignorestatus=true":          {Method: "check", IgnoreStatus: true},
		"format=json,ignorestatus=1,check": {Method: "check", Format: "json", IgnoreStatus: true},
	} {
		got, err := parseCall(in)
		if err != nil {
			t.Errorf("parseCall(%q): %v", in, err)
			continue
		}
		if got != want {
			t.Errorf("parseCall(%q) = %+v, want %+v", in, got, want)
		}
	}
	if _, err := parseCall("build,format=json"); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("build with format: %v", err)
	}
}
