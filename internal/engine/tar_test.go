package engine

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

type tarEntry struct {
	name     string
	body     string
	dir      bool
	link     string // symlink target
	hardlink string
	typ      byte // overrides the type
	mode     int64
}

func makeTar(t *testing.T, entries []tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Mode: 0o644, Typeflag: tar.TypeReg, Size: int64(len(e.body))}
		switch {
		case e.typ != 0:
			h.Typeflag, h.Size = e.typ, 0
		case e.dir:
			h.Typeflag, h.Mode, h.Size = tar.TypeDir, 0o755, 0
		case e.link != "":
			h.Typeflag, h.Linkname, h.Size = tar.TypeSymlink, e.link, 0
		case e.hardlink != "":
			h.Typeflag, h.Linkname, h.Size = tar.TypeLink, e.hardlink, 0
		}
		if e.mode != 0 {
			h.Mode = e.mode
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := io.WriteString(tw, e.body); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// The extractor itself is tested in internal/archive; these tests cover
// how stdin is told apart and handed to it.

func TestSniffArchive(t *testing.T) {
	var gzTar, gzText bytes.Buffer
	zw := gzip.NewWriter(&gzTar)
	zw.Write(makeTar(t, []tarEntry{{name: "Dockerfile", body: "FROM scratch\n"}}))
	zw.Close()
	zw = gzip.NewWriter(&gzText)
	zw.Write([]byte("FROM scratch\n"))
	zw.Close()

	for _, tc := range []struct {
		name  string
		data  []byte
		isTar bool
		err   string
	}{
		{"dockerfile", []byte("FROM scratch\nRUN echo " + strings.Repeat("x", 1000) + "\n"), false, ""},
		{"short dockerfile", []byte("FROM scratch\n"), false, ""},
		{"tar", makeTar(t, []tarEntry{{name: "x", body: "y"}}), true, ""},
		{"empty tar", makeTar(t, nil), true, ""},
		{"gzip tar", gzTar.Bytes(), true, ""},
		// gzip of something that is not a tar is an error, not a Dockerfile.
		{"gzip non-tar", gzText.Bytes(), false, "gzip-compressed input does not hold a tar archive"},
		{"xz", []byte{0xfd, '7', 'z', 'X', 'Z', 0x00, 1, 2}, false, "xz-compressed archives are not supported"},
		{"empty", nil, false, "stdin is empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			isTar, rd, err := sniffArchive(bytes.NewReader(tc.data))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || isTar != tc.isTar {
				t.Fatalf("isTar=%v err=%v, want %v", isTar, err, tc.isTar)
			}
			// Nothing was consumed: rd reads stdin from its start.
			if dt, err := io.ReadAll(rd); err != nil || !bytes.Equal(dt, tc.data) {
				t.Errorf("reader after sniffing: %d bytes, %v; want the %d bytes of stdin", len(dt), err, len(tc.data))
			}
		})
	}
}

func TestPrepareStdinTarGzip(t *testing.T) {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(makeTar(t, []tarEntry{{name: "Dockerfile", body: "FROM scratch\n"}, {name: "zeros", body: strings.Repeat("\x00", 4<<20)}}))
	zw.Close()
	// A context may hold a file of zeros: stdin has no ratio limit.
	r := mustPrepare(t, Options{ContextPath: "-", Stdin: &buf})
	if dt, _ := os.ReadFile(filepath.Join(r.ContextDir(), "Dockerfile")); string(dt) != "FROM scratch\n" {
		t.Errorf("Dockerfile = %q", dt)
	}
	if fi, err := os.Stat(filepath.Join(r.ContextDir(), "zeros")); err != nil || fi.Size() != 4<<20 {
		t.Errorf("zeros: %v %v", fi, err)
	}
}
