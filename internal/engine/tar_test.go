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

var testLimits = tarLimits{entries: 1000, bytes: 1 << 20}

func extract(t *testing.T, data []byte, lim tarLimits) (string, error) {
	t.Helper()
	root := filepath.Join(t.TempDir(), "root")
	if err := os.Mkdir(root, 0o700); err != nil {
		t.Fatal(err)
	}
	isTar, rd, err := sniffArchive(bytes.NewReader(data))
	if err != nil {
		return root, err
	}
	if !isTar {
		t.Fatalf("not recognized as a tar archive")
	}
	return root, extractTar(rd, root, lim)
}

func TestExtractTarRejects(t *testing.T) {
	cases := []struct {
		name    string
		entries []tarEntry
		want    []string
	}{
		{"traversal", []tarEntry{{name: "../evil", body: "x"}}, []string{`entry "../evil"`, "escapes"}},
		{"traversal after clean", []tarEntry{{name: "a/../../evil", body: "x"}}, []string{`entry "a/../../evil"`, "escapes"}},
		{"absolute", []tarEntry{{name: "/etc/evil", body: "x"}}, []string{`entry "/etc/evil"`, "absolute"}},
		{"escaping symlink", []tarEntry{{name: "l", link: "../../etc"}}, []string{`entry "l"`, "escapes"}},
		{"escaping nested symlink", []tarEntry{{name: "a/b/l", link: "../../../x"}}, []string{`entry "a/b/l"`, "escapes"}},
		{"absolute symlink", []tarEntry{{name: "l", link: "/etc/passwd"}}, []string{`entry "l"`, "absolute"}},
		{"symlink chain escaping", []tarEntry{{name: "s", link: "d/.."}, {name: "d", link: "."}}, []string{`entry "s"`, "escapes"}},
		{"write through symlink", []tarEntry{{name: "sub/", dir: true}, {name: "l", link: "sub"}, {name: "l/file", body: "x"}}, []string{`entry "l/file"`, "symlink"}},
		{"hardlink outside", []tarEntry{{name: "h", hardlink: "../../etc/passwd"}}, []string{`entry "h"`, "escapes"}},
		{"hardlink absolute", []tarEntry{{name: "h", hardlink: "/etc/passwd"}}, []string{`entry "h"`, "absolute"}},
		{"hardlink through symlink", []tarEntry{{name: "d/", dir: true}, {name: "d/f", body: "x"}, {name: "l", link: "d"}, {name: "h", hardlink: "l/f"}}, []string{`entry "h"`, "symlink"}},
		{"hardlink to missing", []tarEntry{{name: "h", hardlink: "nope"}}, []string{`entry "h"`, "not in the archive"}},
		{"char device", []tarEntry{{name: "null", typ: tar.TypeChar}}, []string{`entry "null"`, "device"}},
		{"block device", []tarEntry{{name: "sda", typ: tar.TypeBlock}}, []string{`entry "sda"`, "device"}},
		{"fifo", []tarEntry{{name: "p", typ: tar.TypeFifo}}, []string{`entry "p"`, "fifo"}},
		{"file replaces dir", []tarEntry{{name: "d/", dir: true}, {name: "d", body: "x"}}, []string{`entry "d"`, "directory"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			root, err := extract(t, makeTar(t, tc.entries), testLimits)
			if err == nil {
				t.Fatal("extraction succeeded; want an error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			// Nothing was written outside root.
			if _, err := os.Lstat(filepath.Join(filepath.Dir(root), "evil")); err == nil {
				t.Error("file written outside root")
			}
		})
	}
}

func TestExtractTarLimits(t *testing.T) {
	var many []tarEntry
	for i := 0; i < 11; i++ {
		many = append(many, tarEntry{name: strings.Repeat("f", i+1), body: "x"})
	}
	if _, err := extract(t, makeTar(t, many), tarLimits{entries: 10, bytes: 1 << 20}); err == nil || !strings.Contains(err.Error(), "more than 10 entries") {
		t.Errorf("entry limit: %v", err)
	}
	big := []tarEntry{{name: "a", body: strings.Repeat("x", 600)}, {name: "b", body: strings.Repeat("x", 600)}}
	if _, err := extract(t, makeTar(t, big), tarLimits{entries: 10, bytes: 1000}); err == nil || !strings.Contains(err.Error(), `entry "b"`) || !strings.Contains(err.Error(), "limit") {
		t.Errorf("size limit: %v", err)
	}
}

func TestExtractTarOK(t *testing.T) {
	data := makeTar(t, []tarEntry{
		{name: "./", dir: true},
		{name: "./a/b/c.txt", body: "hello"}, // parents created implicitly
		{name: "suid", body: "x", mode: 0o4755},
		{name: "sgid", body: "x", mode: 0o2750},
		{name: "ro/", dir: true, mode: 0o555},
		{name: "ro/f", body: "y", mode: 0o444},
		{name: "rel", link: "a/b/c.txt"},
		{name: "a/up", link: "../suid"},
		{name: "a/dot", link: "."},
		{name: "hard", hardlink: "a/b/c.txt"},
		{name: "suid", body: "replaced", mode: 0o4755}, // later entry wins
	})
	root, err := extract(t, data, testLimits)
	if err != nil {
		t.Fatal(err)
	}
	check := func(rel, want string) {
		t.Helper()
		dt, err := os.ReadFile(filepath.Join(root, rel))
		if err != nil || string(dt) != want {
			t.Errorf("%s = %q, %v; want %q", rel, dt, err, want)
		}
	}
	check("a/b/c.txt", "hello")
	check("rel", "hello")
	check("a/up", "replaced")
	check("hard", "hello")
	check("ro/f", "y")
	for _, f := range []string{"suid", "sgid"} {
		fi, err := os.Stat(filepath.Join(root, f))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode()&(os.ModeSetuid|os.ModeSetgid|os.ModeSticky) != 0 {
			t.Errorf("%s mode %v keeps setuid/setgid", f, fi.Mode())
		}
	}
	if fi, _ := os.Stat(filepath.Join(root, "suid")); fi.Mode().Perm() != 0o755 {
		t.Errorf("suid perm %v, want 0755", fi.Mode().Perm())
	}
	if fi, _ := os.Stat(filepath.Join(root, "ro/f")); fi.Mode().Perm() != 0o444 {
		t.Errorf("ro/f perm %v", fi.Mode().Perm())
	}
	if fi, _ := os.Lstat(filepath.Join(root, "rel")); fi.Mode()&os.ModeSymlink == 0 {
		t.Error("rel is not a symlink")
	}
}

func TestExtractTarGzip(t *testing.T) {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(makeTar(t, []tarEntry{{name: "Dockerfile", body: "FROM scratch\n"}}))
	zw.Close()
	root, err := extract(t, buf.Bytes(), testLimits)
	if err != nil {
		t.Fatal(err)
	}
	if dt, _ := os.ReadFile(filepath.Join(root, "Dockerfile")); string(dt) != "FROM scratch\n" {
		t.Errorf("Dockerfile = %q", dt)
	}

	// gzip of something that is not a tar is an error, not a Dockerfile.
	buf.Reset()
	zw = gzip.NewWriter(&buf)
	zw.Write([]byte("FROM scratch\n"))
	zw.Close()
	if _, _, err := sniffArchive(bytes.NewReader(buf.Bytes())); err == nil || !strings.Contains(err.Error(), "gzip") {
		t.Errorf("gzip non-tar: %v", err)
	}
}

func TestSniffArchive(t *testing.T) {
	for _, tc := range []struct {
		name  string
		data  []byte
		isTar bool
	}{
		{"dockerfile", []byte("FROM scratch\nRUN echo " + strings.Repeat("x", 1000) + "\n"), false},
		{"short dockerfile", []byte("FROM scratch\n"), false},
		{"tar", makeTar(t, []tarEntry{{name: "x", body: "y"}}), true},
		{"empty tar", makeTar(t, nil), true},
	} {
		isTar, _, err := sniffArchive(bytes.NewReader(tc.data))
		if err != nil || isTar != tc.isTar {
			t.Errorf("%s: isTar=%v err=%v, want %v", tc.name, isTar, err, tc.isTar)
		}
	}
}
