package bake

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestTargetRefs(t *testing.T) {
	got, err := targetRefs([]string{"127.0.0.1:7420/proj:bld123", "127.0.0.1:7420/proj:v1"}, "app")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, []string{"127.0.0.1:7420/proj:bld123-app", "127.0.0.1:7420/proj:v1-app"}) {
		t.Errorf("targetRefs = %v", got)
	}
	// The server's references are input: malformed ones are refused, not
	// pushed to.
	for _, bad := range []string{
		"127.0.0.1:7420/proj", // no tag
		"127.0.0.1:7420/proj@sha256:" + strings.Repeat("a", 64), // a digest, no tag
		"host/has space:x",
		"host/proj:" + strings.Repeat("t", 125), // the suffixed tag is too long
		"",
	} {
		if _, err := targetRefs([]string{bad}, "app"); err == nil {
			t.Errorf("targetRefs(%q) succeeded", bad)
		}
	}
}

func TestLayoutDigest(t *testing.T) {
	dir := t.TempDir()
	if _, err := layoutDigest(dir); err == nil {
		t.Error("no index.json: no error")
	}
	os.WriteFile(filepath.Join(dir, "index.json"), []byte(`{"schemaVersion":2,"manifests":[]}`), 0o644)
	if _, err := layoutDigest(dir); err == nil {
		t.Error("empty index: no error")
	}
	os.WriteFile(filepath.Join(dir, "index.json"), []byte(`{"schemaVersion":2,`), 0o644)
	if _, err := layoutDigest(dir); err == nil {
		t.Error("truncated index: no error")
	}
	d := "sha256:" + strings.Repeat("b", 64)
	os.WriteFile(filepath.Join(dir, "index.json"), []byte(`{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.index.v1+json","digest":"`+d+`","size":10}]}`), 0o644)
	if got, err := layoutDigest(dir); err != nil || got != d {
		t.Errorf("layoutDigest = %q, %v", got, err)
	}
}

func TestTargetWriter(t *testing.T) {
	var buf bytes.Buffer
	w := targetWriter{w: &buf, target: "app"}
	w.Write([]byte("kiln: waiting for the project's builder to start...\n"))
	w.Write([]byte("other line\n"))
	want := "kiln: target app: waiting for the project's builder to start...\nother line\n"
	if buf.String() != want {
		t.Errorf("got %q, want %q", buf.String(), want)
	}
}

func TestProgressMode(t *testing.T) {
	for _, ok := range []string{"", "auto", "plain", "tty", "quiet", "rawjson"} {
		if _, err := progressMode(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	if _, err := progressMode("fancy"); err == nil {
		t.Error("fancy accepted")
	}
}
