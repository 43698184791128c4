package engine

import (
	"bytes"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/kilntest"
	"github.com/moby/buildkit/client"
)

func TestPrepareBadNoDefaultAttestationsEnv(t *testing.T) {
	t.Setenv(noDefaultAttestationsEnv, "perhaps")
	_, err := prepareOptions(Options{ContextPath: kilntest.Context(t)})
	if !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), noDefaultAttestationsEnv) {
		t.Errorf("err = %v", err)
	}
}

// --push and --load merge with -o the way buildx merges them.
func TestPrepareOutputShorthands(t *testing.T) {
	ctxDir := kilntest.Context(t)
	dir := t.TempDir()
	type want struct {
		typ, dest  string
		push, load bool
		attrs      map[string]string
	}
	cases := []struct {
		name string
		o    Options
		want []want
	}{
		{"push", Options{Push: true, Tags: []string{"r.example/app:1", "r.example/app:latest"}},
			[]want{{typ: client.ExporterImage, push: true, attrs: map[string]string{"push": "true", "name": "r.example/app:1,r.example/app:latest"}}}},
		{"load untagged", Options{Load: true},
			[]want{{typ: client.ExporterDocker, load: true, attrs: map[string]string{}}}},
		{"load tagged", Options{Load: true, Tags: []string{"app:dev"}},
			[]want{{typ: client.ExporterDocker, load: true, attrs: map[string]string{"name": "app:dev"}}}},
		{"push sets push on -o image", Options{Push: true, Outputs: []string{"type=image,name=r/x,compression=zstd,compression-level=3,force-compression=true,oci-mediatypes=true"}},
			[]want{{typ: client.ExporterImage, push: true, attrs: map[string]string{"push": "true", "name": "r/x", "compression": "zstd", "compression-level": "3", "force-compression": "true", "oci-mediatypes": "true"}}}},
		{"registry is image+push", Options{Outputs: []string{"type=registry,registry.insecure=true"}, Tags: []string{"127.0.0.1:5000/app"}},
			[]want{{typ: client.ExporterImage, push: true, attrs: map[string]string{"push": "true", "registry.insecure": "true", "name": "127.0.0.1:5000/app"}}}},
		{"image without push stays", Options{Outputs: []string{"type=image"}, Tags: []string{"app"}},
			[]want{{typ: client.ExporterImage, attrs: map[string]string{"name": "app"}}}},
		{"docker without dest loads", Options{Outputs: []string{"type=docker"}, Load: true, Tags: []string{"app"}},
			[]want{{typ: client.ExporterDocker, load: true, attrs: map[string]string{"name": "app"}}}},
		{"push and load", Options{Push: true, Load: true, Tags: []string{"r/app"}},
			[]want{{typ: client.ExporterImage, push: true, attrs: map[string]string{"push": "true", "name": "r/app"}}, {typ: client.ExporterDocker, load: true, attrs: map[string]string{"name": "r/app"}}}},
		{"files and push", Options{Push: true, Tags: []string{"r/app"}, Outputs: []string{"type=local,dest=" + dir + "/l", "type=oci,dest=" + dir + "/o.tar"}},
			[]want{
				{typ: client.ExporterLocal, dest: dir + "/l", attrs: map[string]string{}},
				{typ: client.ExporterOCI, dest: dir + "/o.tar", attrs: map[string]string{"name": "r/app"}},
				{typ: client.ExporterImage, push: true, attrs: map[string]string{"push": "true", "name": "r/app"}}}},
		{"oci layout dir", Options{Outputs: []string{"type=oci,dest=" + dir + "/layout,tar=false"}},
			[]want{{typ: client.ExporterOCI, dest: dir + "/layout", attrs: map[string]string{"tar": "false"}}}},
		{"oci to stdout by default", Options{Outputs: []string{"type=oci"}},
			[]want{{typ: client.ExporterOCI, dest: "-", attrs: map[string]string{}}}},
		{"cacheonly", Options{Outputs: []string{"type=cacheonly"}}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.o.ContextPath, tc.o.Stdout = ctxDir, &bytes.Buffer{}
			r := mustPrepare(t, tc.o)
			if len(r.outputs) != len(tc.want) {
				t.Fatalf("outputs %d, want %d: %+v", len(r.outputs), len(tc.want), r.Outputs())
			}
			for i, w := range tc.want {
				o := r.outputs[i]
				if o.Type != w.typ || o.Dest != w.dest || o.IsPush() != w.push || o.IsLoad() != w.load {
					t.Errorf("output %d: %s dest=%q push=%v load=%v, want %+v", i, o.Type, o.Dest, o.IsPush(), o.IsLoad(), w)
				}
				if len(o.Attrs) != len(w.attrs) {
					t.Errorf("output %d: attrs %v, want %v", i, o.Attrs, w.attrs)
				}
				for k, v := range w.attrs {
					if o.Attrs[k] != v {
						t.Errorf("output %d: %s=%q, want %q", i, k, o.Attrs[k], v)
					}
				}
			}
			push, load := false, false
			for _, w := range tc.want {
				push, load = push || w.push, load || w.load
			}
			if r.Pushes() != push || r.Loads() != load {
				t.Errorf("Pushes %v Loads %v", r.Pushes(), r.Loads())
			}
		})
	}
}

// The export entries: files, directories, layouts; a load without a
// Docker engine is refused rather than silently dropped.
func TestExportEntries(t *testing.T) {
	ctxDir := kilntest.Context(t)
	dir := t.TempDir()
	r := mustPrepare(t, Options{ContextPath: ctxDir, Stdout: &bytes.Buffer{}, Tags: []string{"r/app"}, Push: true,
		Outputs: []string{"type=local,dest=" + filepath.Join(dir, "l"), "type=oci,dest=" + filepath.Join(dir, "layout") + ",tar=false", "type=tar"}})
	ents, err := r.exportEntries(nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 4 {
		t.Fatalf("%d entries", len(ents))
	}
	if ents[0].Type != client.ExporterLocal || ents[0].OutputDir != filepath.Join(dir, "l") || ents[0].Output != nil {
		t.Errorf("local: %+v", ents[0])
	}
	if ents[1].Type != client.ExporterOCI || ents[1].OutputDir != filepath.Join(dir, "layout") || ents[1].Output != nil {
		t.Errorf("oci layout: %+v", ents[1])
	}
	if ents[2].Type != client.ExporterTar || ents[2].Output == nil {
		t.Errorf("tar: %+v", ents[2])
	}
	if ents[3].Type != client.ExporterImage || ents[3].Attrs["push"] != "true" || ents[3].Attrs["name"] != "r/app" || ents[3].Output != nil || ents[3].OutputDir != "" {
		t.Errorf("image: %+v", ents[3])
	}

	load := mustPrepare(t, Options{ContextPath: ctxDir, Load: true})
	if _, err := load.exportEntries(nil); err == nil {
		t.Error("a load output without a Docker engine was accepted")
	}
}

// Attestations become the frontend's attest:* attributes; the default is
// buildx's inline-only min provenance.
func TestPrepareAttests(t *testing.T) {
	ctxDir := kilntest.Context(t)
	cases := []struct {
		name       string
		o          Options
		env        string
		prov, sbom string // "-" means absent
		explicit   []string
	}{
		{"default", Options{}, "", defaultProvenance, "-", nil},
		{"default off by env", Options{}, "1", "-", "-", nil},
		{"provenance false", Options{Provenance: "false"}, "", "-", "-", nil},
		{"provenance true", Options{Provenance: "true"}, "", "", "-", []string{"provenance"}},
		{"provenance max", Options{Provenance: "max"}, "", "mode=max", "-", []string{"provenance"}},
		{"provenance attrs", Options{Provenance: "mode=max,builder-id=https://ci.example/run/1"}, "", "builder-id=https://ci.example/run/1,mode=max", "-", []string{"provenance"}},
		{"sbom only keeps default provenance", Options{SBOM: "true"}, "", defaultProvenance, "", []string{"sbom"}},
		{"attest both", Options{Attests: []string{"type=sbom,generator=example.com/scanner:1", "type=provenance,mode=min"}}, "", "mode=min", "generator=example.com/scanner:1", []string{"sbom", "provenance"}},
		{"attest disabled", Options{Attests: []string{"type=provenance,disabled=true"}, SBOM: "false"}, "", "-", "-", nil},
		{"quoted comma", Options{Attests: []string{`type=provenance,"builder-id=a,b"`}}, "", `"builder-id=a,b"`, "-", []string{"provenance"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if tc.env != "" {
				t.Setenv(noDefaultAttestationsEnv, tc.env)
			}
			tc.o.ContextPath = ctxDir
			r := mustPrepare(t, tc.o)
			attrs := r.FrontendAttrs()
			for key, want := range map[string]string{"attest:provenance": tc.prov, "attest:sbom": tc.sbom} {
				got, ok := attrs[key]
				switch {
				case want == "-" && ok:
					t.Errorf("%s = %q, want absent", key, got)
				case want != "-" && (!ok || got != want):
					t.Errorf("%s = %q (present %v), want %q", key, got, ok, want)
				}
			}
			if strings.Join(r.attests, ",") != strings.Join(tc.explicit, ",") {
				t.Errorf("explicit attestations %v, want %v", r.attests, tc.explicit)
			}
		})
	}
}

// Cache flags: registry entries reach BuildKit; gha/local/s3/azblob are
// dropped with a one-line warning each.
func TestPrepareCache(t *testing.T) {
	ctxDir := kilntest.Context(t)
	r := mustPrepare(t, Options{ContextPath: ctxDir,
		CacheFrom: []string{"r.example/app:cache,r.example/app:cache2", "type=registry,ref=127.0.0.1:5000/c,registry.insecure=true", "type=gha", "type=local,src=/tmp/x"},
		CacheTo:   []string{"type=registry,ref=r.example/app:cache,mode=max,image-manifest=true", "type=inline", "type=gha,mode=max", "type=s3,bucket=b", "", "type=azblob,name=x"},
	})
	from, to := r.cacheImports, r.cacheExports
	if len(from) != 3 || from[0].Type != "registry" || from[0].Attrs["ref"] != "r.example/app:cache" || from[1].Attrs["ref"] != "r.example/app:cache2" ||
		from[2].Attrs["registry.insecure"] != "true" || from[2].Attrs["ref"] != "127.0.0.1:5000/c" {
		t.Errorf("cache imports %+v", from)
	}
	if len(to) != 2 || to[0].Type != "registry" || to[0].Attrs["mode"] != "max" || to[0].Attrs["image-manifest"] != "true" || to[1].Type != "inline" {
		t.Errorf("cache exports %+v", to)
	}
	if _, ok := to[0].Attrs["type"]; ok {
		t.Errorf("type left in attrs: %v", to[0].Attrs)
	}
	w := r.Warnings()
	if len(w) != 5 {
		t.Fatalf("warnings %q", w)
	}
	for _, line := range w {
		if strings.Contains(line, "\n") || !strings.Contains(line, "ignored") || !strings.Contains(line, "persistent") {
			t.Errorf("warning %q", line)
		}
	}
	opt, err := r.solveOpt(nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(opt.CacheImports) != 3 || len(opt.CacheExports) != 2 {
		t.Errorf("solve opt cache %+v %+v", opt.CacheImports, opt.CacheExports)
	}
}
