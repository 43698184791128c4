package archive

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/errdefs"
)

// entry describes one tar entry to write; "$OUT" in name, link and
// hardlink stands for the sandbox's outside directory.
type entry struct {
	name     string
	body     string
	dir      bool
	link     string // symlink target
	hardlink string
	typ      byte // overrides the type
	mode     int64
	mtime    time.Time
}

func writeTar(t testing.TB, w io.Writer, entries []entry) {
	t.Helper()
	tw := tar.NewWriter(w)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Mode: 0o644, Typeflag: tar.TypeReg, Size: int64(len(e.body)), ModTime: e.mtime}
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
		if h.Typeflag == tar.TypeXGlobalHeader {
			h = &tar.Header{Typeflag: tar.TypeXGlobalHeader, PAXRecords: map[string]string{"comment": e.body}}
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
}

func makeTar(t testing.TB, entries []entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	writeTar(t, &buf, entries)
	return buf.Bytes()
}

func gz(t testing.TB, data []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// sandbox lays out base/{outside/keep, parent/root}: the archive goes into
// root, and nothing else may change.
type sandbox struct {
	base, outside, parent, root string
}

func newSandbox(t testing.TB) *sandbox {
	t.Helper()
	base := t.TempDir()
	s := &sandbox{
		base:    base,
		outside: filepath.Join(base, "outside"),
		parent:  filepath.Join(base, "parent"),
		root:    filepath.Join(base, "parent", "root"),
	}
	for _, d := range []string{s.outside, s.parent, s.root} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(s.outside, "keep"), []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	return s
}

func (s *sandbox) expand(entries []entry) []entry {
	out := slices.Clone(entries)
	for i := range out {
		out[i].name = strings.ReplaceAll(out[i].name, "$OUT", s.outside)
		out[i].link = strings.ReplaceAll(out[i].link, "$OUT", s.outside)
		out[i].hardlink = strings.ReplaceAll(out[i].hardlink, "$OUT", s.outside)
	}
	return out
}

// checkContained fails t if anything but root changed in the sandbox.
func (s *sandbox) checkContained(t testing.TB) {
	t.Helper()
	for dir, want := range map[string][]string{s.base: {"outside", "parent"}, s.parent: {"root"}, s.outside: {"keep"}} {
		ents, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		if !slices.Equal(names, want) {
			t.Errorf("%s holds %v, want %v: something was written outside root", dir, names, want)
		}
	}
	fi, err := os.Lstat(filepath.Join(s.outside, "keep"))
	if err != nil || !fi.Mode().IsRegular() || fi.Size() != 4 || fi.Mode().Perm() != 0o644 {
		t.Errorf("outside/keep changed: %v %v", fi, err)
	}
	if fi, err := os.Stat(s.outside); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("outside dir changed: %v %v", fi, err)
	}
}

func (s *sandbox) extract(t testing.TB, data []byte, lim Limits, pol Policy) (Stats, error) {
	t.Helper()
	st, err := Extract(bytes.NewReader(data), s.root, lim, pol)
	s.checkContained(t)
	if err != nil && strings.Contains(err.Error(), s.root) {
		t.Errorf("error %q shows a server path", err)
	}
	return st, err
}

// wantErr fails t unless err wraps kind and contains every want.
func wantErr(t testing.TB, err error, kind error, want ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("succeeded; want an error containing %q", want)
	}
	if !errors.Is(err, kind) {
		t.Errorf("error %q does not wrap %v", err, kind)
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not contain %q", err, w)
		}
	}
}

func TestExtractRejectsHostileEntries(t *testing.T) {
	cases := []struct {
		name    string
		entries []entry
		pol     Policy
		want    []string
	}{
		{"traversal", []entry{{name: "../../x", body: "x"}}, Policy{}, []string{`entry "../../x": path escapes the build context`}},
		{"traversal into parent", []entry{{name: "../x", body: "x"}}, Policy{}, []string{`entry "../x": path escapes`}},
		{"traversal after clean", []entry{{name: "a/../../x", body: "x"}}, Policy{}, []string{`entry "a/../../x": path escapes`}},
		{"traversal in a directory", []entry{{name: "a/../../x/", dir: true}}, Policy{}, []string{`entry "a/../../x/": path escapes`}},
		{"absolute", []entry{{name: "/etc/x", body: "x"}}, Policy{}, []string{`entry "/etc/x": absolute paths are not allowed`}},
		{"absolute into outside", []entry{{name: "$OUT/x", body: "x"}}, Policy{}, []string{"absolute paths are not allowed"}},
		{"symlink to /etc then through it", []entry{{name: "link", link: "/etc"}, {name: "link/passwd", body: "x"}}, Policy{},
			[]string{`entry "link/passwd": refusing to write through symlink "link"`}},
		{"symlink to outside then through it", []entry{{name: "link", link: "$OUT"}, {name: "link/keep", body: "x"}}, Policy{},
			[]string{`entry "link/keep": refusing to write through symlink "link"`}},
		{"symlink escaping with .. then through it", []entry{{name: "l", link: "../outside"}, {name: "l/keep", body: "x"}}, Policy{},
			[]string{`entry "l/keep": refusing to write through symlink "l"`, "escapes"}},
		{"directory through an absolute symlink", []entry{{name: "l", link: "$OUT"}, {name: "l/d/", dir: true}}, Policy{},
			[]string{`entry "l/d/": refusing to write through symlink "l"`}},
		{"hardlink through an absolute symlink", []entry{{name: "l", link: "$OUT"}, {name: "h", hardlink: "l/keep"}}, Policy{},
			[]string{`entry "h": hardlink to "l/keep": target path goes through symlink "l"`}},
		{"write through in-root symlink", []entry{{name: "sub/", dir: true}, {name: "link", link: "sub"}, {name: "link/passwd", body: "x"}}, Policy{},
			[]string{`entry "link/passwd": refusing to write through symlink "link"`}},
		{"directory through symlink", []entry{{name: "sub/", dir: true}, {name: "link", link: "sub"}, {name: "link/d/", dir: true}}, Policy{},
			[]string{`entry "link/d/": refusing to write through symlink "link"`}},
		{"write through a symlink chain", []entry{{name: "a", link: "."}, {name: "b", link: "a/../.."}, {name: "b/keep", body: "x"}}, Policy{},
			[]string{`entry "b/keep": refusing to write through symlink "b"`}},
		{"symlink with empty target", []entry{{name: "a", typ: tar.TypeSymlink}}, Policy{}, []string{`entry "a": symlink with an empty target`}},
		{"hardlink outside", []entry{{name: "h", hardlink: "../outside/keep"}}, Policy{}, []string{`entry "h": hardlink to "../outside/keep": path escapes the build context`}},
		{"hardlink absolute", []entry{{name: "h", hardlink: "$OUT/keep"}}, Policy{}, []string{`entry "h": hardlink to`, "absolute paths are not allowed"}},
		{"hardlink through symlink", []entry{{name: "d/", dir: true}, {name: "d/f", body: "x"}, {name: "l", link: "d"}, {name: "h", hardlink: "l/f"}}, Policy{},
			[]string{`entry "h": hardlink to "l/f": target path goes through symlink "l"`}},
		{"hardlink to escaping symlink path", []entry{{name: "l", link: "."}, {name: "h", hardlink: "l/../../outside/keep"}}, Policy{}, []string{`entry "h"`, "escapes"}},
		{"hardlink to missing", []entry{{name: "h", hardlink: "nope"}}, Policy{}, []string{`entry "h"`, "not in the archive"}},
		{"hardlink to a directory", []entry{{name: "d/", dir: true}, {name: "h", hardlink: "d"}}, Policy{}, []string{`entry "h"`, "not a regular file"}},
		{"hardlink to the root", []entry{{name: "h", hardlink: "./"}}, Policy{}, []string{`entry "h"`, "root"}},
		{"char device", []entry{{name: "dev/null", typ: tar.TypeChar}}, Policy{}, []string{`entry "dev/null": device and fifo nodes are not allowed in a build context`}},
		{"block device", []entry{{name: "sda", typ: tar.TypeBlock}}, Policy{}, []string{`entry "sda": device`}},
		{"fifo", []entry{{name: "p", typ: tar.TypeFifo}}, Policy{}, []string{`entry "p"`, "fifo"}},
		{"unsupported type", []entry{{name: "c", typ: tar.TypeCont}}, Policy{}, []string{`entry "c": unsupported tar entry type "7"`}},
		{"setuid", []entry{{name: "bin/su", body: "x", mode: 0o4755}}, Policy{RejectSpecialBits: true}, []string{`entry "bin/su": setuid bit is not allowed`}},
		{"setuid and setgid", []entry{{name: "bin/su", body: "x", mode: 0o6755}}, Policy{RejectSpecialBits: true}, []string{`entry "bin/su": setuid/setgid bits are not allowed`}},
		{"setgid directory", []entry{{name: "shared/", dir: true, mode: 0o2775}}, Policy{RejectSpecialBits: true}, []string{`entry "shared/": setgid bit`}},
		{"sticky directory", []entry{{name: "tmp/", dir: true, mode: 0o1777}}, Policy{RejectSpecialBits: true}, []string{`entry "tmp/": sticky bit`}},
		{"file replaces directory", []entry{{name: "d/", dir: true}, {name: "d", body: "x"}}, Policy{}, []string{`entry "d": would replace a directory`}},
		{"parent is a file", []entry{{name: "f", body: "x"}, {name: "f/g", body: "x"}}, Policy{}, []string{`entry "f/g": parent "f" is not a directory`}},
		{"name is the root", []entry{{name: ".", body: "x"}}, Policy{}, []string{`entry ".": not a valid file name`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := newSandbox(t)
			for _, compress := range []bool{false, true} {
				data := makeTar(t, s.expand(tc.entries))
				if compress {
					data = gz(t, data)
					os.RemoveAll(s.root)
					os.Mkdir(s.root, 0o755)
				}
				_, err := s.extract(t, data, Limits{}, tc.pol)
				wantErr(t, err, errdefs.ErrInvalid, tc.want...)
			}
		})
	}
}

func TestExtractLimits(t *testing.T) {
	var many []entry
	for i := range 11 {
		many = append(many, entry{name: strings.Repeat("f", i+1), body: "x"})
	}
	deep := strings.Repeat("a/", 4) + "f"
	random := make([]byte, 20<<10)
	rand.NewChaCha8([32]byte{}).Read(random)
	cases := []struct {
		name string
		data func(t *testing.T) []byte
		lim  Limits
		want []string
	}{
		{"entries", func(t *testing.T) []byte { return makeTar(t, many) }, Limits{Entries: 10}, []string{"archive has more than 10 entries"}},
		{"entries, gzip", func(t *testing.T) []byte { return gz(t, makeTar(t, many)) }, Limits{Entries: 10}, []string{"more than 10 entries"}},
		{"depth", func(t *testing.T) []byte { return makeTar(t, []entry{{name: deep, body: "x"}}) }, Limits{Depth: 4},
			[]string{`entry "a/a/a/a/f": path is deeper than 4 components`}},
		{"depth of a directory", func(t *testing.T) []byte {
			return makeTar(t, []entry{{name: strings.Repeat("d/", 65), dir: true}})
		}, Limits{}, []string{"deeper than 64 components"}},
		{"uncompressed", func(t *testing.T) []byte {
			return makeTar(t, []entry{{name: "a", body: strings.Repeat("x", 600)}, {name: "b", body: strings.Repeat("x", 600)}})
		}, Limits{UncompressedBytes: 1000}, []string{`entry "b": archive content exceeds the limit of 1000 bytes uncompressed`}},
		{"compressed, plain", func(t *testing.T) []byte {
			return makeTar(t, []entry{{name: "r", body: string(random)}})
		}, Limits{CompressedBytes: 10 << 10}, []string{"archive is larger than the limit of 10 KiB"}},
		{"compressed, gzip", func(t *testing.T) []byte {
			return gz(t, makeTar(t, []entry{{name: "r", body: string(random)}}))
		}, Limits{CompressedBytes: 4 << 10}, []string{"archive is larger than the limit of 4 KiB"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := newSandbox(t)
			_, err := s.extract(t, tc.data(t), tc.lim, Policy{})
			wantErr(t, err, errdefs.ErrInvalid, tc.want...)
		})
	}
}

// zeroTarGz writes a gzip-compressed tar of one file of n zero bytes.
func zeroTarGz(t *testing.T, n int64) []byte {
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	tw := tar.NewWriter(zw)
	if err := tw.WriteHeader(&tar.Header{Name: "zeros", Mode: 0o644, Size: n, Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	if _, err := io.CopyN(tw, zeroReader{}, n); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

func TestExtractBombs(t *testing.T) {
	t.Run("zeros", func(t *testing.T) {
		// 64 MiB of zeros in about 64 KiB: stopped by the ratio long
		// before it is all written.
		data := zeroTarGz(t, 64<<20)
		s := newSandbox(t)
		_, err := s.extract(t, data, Limits{}, Policy{})
		wantErr(t, err, errdefs.ErrInvalid, "archive expands more than 200x", "refusing a possible archive bomb")
		if fi, err := os.Stat(filepath.Join(s.root, "zeros")); err == nil && fi.Size() > 32<<20 {
			t.Errorf("wrote %d bytes before stopping", fi.Size())
		}
	})
	t.Run("zeros after the end", func(t *testing.T) {
		// The end-of-archive marker followed by a flood of zeros: the
		// drain after the tar stream is bounded too.
		var buf bytes.Buffer
		zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
		writeTar(t, zw, []entry{{name: "f", body: "x"}})
		io.CopyN(zw, zeroReader{}, 64<<20)
		zw.Close()
		s := newSandbox(t)
		_, err := s.extract(t, buf.Bytes(), Limits{}, Policy{})
		wantErr(t, err, errdefs.ErrInvalid, "archive expands more than")
	})
	t.Run("many entries", func(t *testing.T) {
		var buf bytes.Buffer
		zw := gzip.NewWriter(&buf)
		tw := tar.NewWriter(zw)
		for i := range 5000 {
			tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("d/%d", i), Typeflag: tar.TypeReg, Mode: 0o644})
		}
		tw.Close()
		zw.Close()
		s := newSandbox(t)
		_, err := s.extract(t, buf.Bytes(), Limits{Entries: 1000}, Policy{})
		wantErr(t, err, errdefs.ErrInvalid, "archive has more than 1000 entries")
	})
	t.Run("deep nesting", func(t *testing.T) {
		s := newSandbox(t)
		_, err := s.extract(t, gz(t, makeTar(t, []entry{{name: strings.Repeat("a/", 1000) + "f", body: "x"}})), Limits{}, Policy{})
		wantErr(t, err, errdefs.ErrInvalid, "path is deeper than 64 components")
		if _, err := os.Lstat(filepath.Join(s.root, "a")); err == nil {
			t.Error("created directories for a rejected entry")
		}
	})
	t.Run("symlink tangle", func(t *testing.T) {
		// Links whose resolving would take many steps each: kept as they
		// are, never resolved while extracting, so no work to bound.
		es := []entry{{name: "d/", dir: true}}
		target := strings.Repeat("d/../", 750) + "x"
		for i := range 200 {
			es = append(es, entry{name: fmt.Sprintf("l%d", i), link: target})
		}
		s := newSandbox(t)
		if _, err := s.extract(t, makeTar(t, es), Limits{Entries: 250}, Policy{}); err != nil {
			t.Fatal(err)
		}
		if got, _ := os.Readlink(filepath.Join(s.root, "l199")); got != target {
			t.Errorf("l199 -> %q", got)
		}
	})
}

// Symlinks are kept as they are, whatever they point at, as BuildKit's
// COPY keeps them (an output dir's out/bin/[ -> /bin/busybox): extraction
// never follows them, and ResolveInRoot, how a reader of the tree finds a
// file in it, refuses a path through one that leaves the root.
func TestExtractKeepsSymlinks(t *testing.T) {
	cases := []struct {
		name, link string
		resolveErr string // ResolveInRoot(name)'s error; "" resolves inside
	}{
		{"out/bin/[", "/bin/busybox", `goes through absolute symlink "out/bin/["`},
		{"etc", "/etc", "absolute symlink"},
		{"up", "../outside", "escapes the build context"},
		{"a/b/l", "../../../outside", "escapes the build context"},
		{"dot", ".", ""},
		{"chain", "dot/../..", "escapes the build context"},
		{"loop1", "loop2", "too many levels of symbolic links"},
		{"loop2", "loop1", "too many levels of symbolic links"},
		{"self", "self", "too many levels"},
		{"rel", "out/bin", ""},
		{"dangling", "nowhere/at/all", ""},
	}
	var es []entry
	for _, c := range cases {
		es = append(es, entry{name: c.name, link: c.link})
	}
	es = append(es, entry{name: "out/bin/busybox", body: "x"})
	s := newSandbox(t)
	for _, compress := range []bool{false, true} {
		data := makeTar(t, es)
		if compress {
			data = gz(t, data)
		}
		os.RemoveAll(s.root)
		os.Mkdir(s.root, 0o755)
		if _, err := s.extract(t, data, Limits{}, Policy{RejectSpecialBits: true}); err != nil {
			t.Fatalf("compressed=%v: %v", compress, err)
		}
		for _, c := range cases {
			got, err := os.Readlink(filepath.Join(s.root, filepath.FromSlash(c.name)))
			if err != nil || got != c.link {
				t.Errorf("%s -> %q, %v; want the link kept as -> %q", c.name, got, err, c.link)
			}
			_, err = ResolveInRoot(s.root, c.name)
			switch {
			case c.resolveErr == "" && err != nil:
				t.Errorf("ResolveInRoot(%s): %v", c.name, err)
			case c.resolveErr != "":
				wantErr(t, err, errdefs.ErrInvalid, c.resolveErr)
			}
		}
	}
}

func TestExtractCorrupt(t *testing.T) {
	good := makeTar(t, []entry{{name: "Dockerfile", body: "FROM scratch\n"}, {name: "big", body: strings.Repeat("y", 5000)}})
	goodGz := gz(t, good)
	const (
		headerEnd = 512                  // the first header
		fileEnd   = headerEnd + 512      // plus "FROM scratch\n", padded
		bigEnd    = fileEnd + 512 + 5120 // the next entry, padded
	)
	if len(good) != bigEnd+1024 || !bytes.Equal(good[bigEnd:], make([]byte, 1024)) || string(good[headerEnd:headerEnd+13]) != "FROM scratch\n" {
		t.Fatal("the test archive is not laid out as the cuts below assume")
	}
	bz, _ := base64.StdEncoding.DecodeString(bzip2Fixture)

	var trailing bytes.Buffer
	trailing.Write(goodGz)
	trailing.WriteString("garbage")

	flipped := slices.Clone(goodGz)
	flipped[len(flipped)-6] ^= 0x55 // in the CRC-32

	cases := []struct {
		name string
		data []byte
		want []string
	}{
		{"truncated gzip trailer", goodGz[:len(goodGz)-4], []string{"archive is truncated or corrupt: unexpected EOF"}},
		{"truncated gzip", goodGz[:len(goodGz)/2], []string{"archive is truncated or corrupt"}},
		{"corrupt gzip", flipped, []string{"archive is truncated or corrupt: gzip: invalid checksum"}},
		{"garbage after gzip", trailing.Bytes(), []string{"archive is truncated or corrupt"}},
		{"truncated bzip2", bz[:len(bz)-10], []string{"archive is truncated or corrupt"}},
		{"truncated tar inside a file", good[:fileEnd+512+100], []string{"archive is truncated or corrupt: unexpected EOF"}},
		{"truncated tar after a header", good[:headerEnd], []string{"archive is truncated or corrupt: unexpected EOF"}},
		{"truncated tar after a file", good[:fileEnd], []string{"archive is truncated or corrupt: unexpected EOF"}},
		{"truncated tar before padding", good[:fileEnd-512+13], []string{"unexpected EOF"}},
		{"tar without an end marker", good[:bigEnd], []string{"archive is truncated or corrupt: unexpected EOF"}},
		{"gzip tar without an end marker", gz(t, good[:bigEnd]), []string{"unexpected EOF"}},
		{"not an archive", []byte("FROM scratch\nRUN echo hi\n"), []string{"not a tar archive"}},
		{"long non-archive", bytes.Repeat([]byte("FROM scratch\n"), 100), []string{"not a tar archive"}},
		{"empty", nil, []string{"archive is empty"}},
		{"xz", []byte{0xfd, '7', 'z', 'X', 'Z', 0x00, 0, 0, 0}, []string{"xz-compressed archives are not supported"}},
		{"zstd", []byte{0x28, 0xb5, 0x2f, 0xfd, 0, 0}, []string{"zstd-compressed archives are not supported"}},
		{"zip", []byte("PK\x03\x04rest"), []string{"zip archives are not supported"}},
		{"gzip of a non-tar", gz(t, []byte("FROM scratch\n")), []string{"gzip-compressed data does not hold a tar archive"}},
		{"gzip magic only", []byte{0x1f, 0x8b}, []string{"archive is truncated or corrupt"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := newSandbox(t)
			_, err := s.extract(t, tc.data, Limits{}, Policy{})
			wantErr(t, err, errdefs.ErrInvalid, tc.want...)
		})
	}
}

func TestExtractOK(t *testing.T) {
	mtime := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	long := strings.Repeat("long-name-", 20) + "file" // needs a PAX record
	entries := []entry{
		{name: "./", dir: true},
		{typ: tar.TypeXGlobalHeader, body: "hello"},
		{name: "./a/b/c.txt", body: "hello", mtime: mtime}, // parents created implicitly
		{name: "suid", body: "x", mode: 0o4755},
		{name: "sgid", body: "x", mode: 0o2750},
		{name: "ro/", dir: true, mode: 0o555, mtime: mtime},
		{name: "ro/f", body: "y", mode: 0o444},
		{name: "sticky/", dir: true, mode: 0o1777},
		{name: "rel", link: "a/b/c.txt"},
		{name: "a/up", link: "../suid"},
		{name: "a/dot", link: "."},
		{name: "a/via", link: "dot/dot/b/c.txt"},
		{name: "dangling", link: "missing/file"},
		{name: "hard", hardlink: "a/b/c.txt"},
		{name: "suid", body: "replaced", mode: 0o4755}, // later entry wins
		{name: "target", body: "orig"},
		{name: "swap", link: "target"},
		{name: "swap", body: "new"}, // replaces the link, does not write through it
		{name: "h2", hardlink: "target"},
		{name: "h2", body: "other"}, // replaces the hardlink, target keeps its content
		{name: "d/" + long, body: "long"},
		{name: "empty", body: ""},
	}
	var bodies int64
	for _, e := range entries {
		if e.typ == 0 && !e.dir && e.link == "" && e.hardlink == "" {
			bodies += int64(len(e.body))
		}
	}
	plain := makeTar(t, entries)
	for name, data := range map[string][]byte{"plain": plain, "gzip": gz(t, plain)} {
		t.Run(name, func(t *testing.T) {
			s := newSandbox(t)
			st, err := s.extract(t, data, Limits{}, Policy{})
			if err != nil {
				t.Fatal(err)
			}
			sum := sha256.Sum256(data)
			if want := (Stats{Entries: len(entries), Bytes: bodies, Compressed: int64(len(data)), SHA256: hex.EncodeToString(sum[:])}); st != want {
				t.Errorf("stats %+v, want %+v", st, want)
			}
			root := s.root
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
			check("a/via", "hello")
			check("hard", "hello")
			check("ro/f", "y")
			check("target", "orig")
			check("swap", "new")
			check("h2", "other")
			check("d/"+long, "long")
			check("empty", "")
			mode := func(rel string) os.FileMode {
				t.Helper()
				fi, err := os.Lstat(filepath.Join(root, rel))
				if err != nil {
					t.Fatal(err)
				}
				return fi.Mode()
			}
			for rel, want := range map[string]os.FileMode{
				"suid":      0o755,
				"sgid":      0o750,
				"ro/f":      0o444,
				"ro":        fs.ModeDir | 0o755, // the owner keeps rwx
				"sticky":    fs.ModeDir | 0o777,
				"a":         fs.ModeDir | 0o755,
				"swap":      0o644,
				"rel":       fs.ModeSymlink,
				"dangling":  fs.ModeSymlink,
				"a/b/c.txt": 0o644,
			} {
				got := mode(rel)
				if got&fs.ModeSymlink != 0 {
					got &^= fs.ModePerm
				}
				if got != want {
					t.Errorf("%s mode %v, want %v", rel, got, want)
				}
			}
			for rel, want := range map[string]time.Time{"a/b/c.txt": mtime, "ro": mtime} {
				if fi, err := os.Stat(filepath.Join(root, rel)); err != nil || !fi.ModTime().Equal(want) {
					t.Errorf("%s mtime %v, want %v (%v)", rel, fi.ModTime(), want, err)
				}
			}
			if fi, err := os.Stat(filepath.Join(root, "hard")); err == nil {
				if fc, _ := os.Stat(filepath.Join(root, "a/b/c.txt")); !os.SameFile(fi, fc) {
					t.Error("hard is not a hardlink of a/b/c.txt")
				}
			}
		})
	}
	t.Run("bzip2", func(t *testing.T) {
		data, err := base64.StdEncoding.DecodeString(bzip2Fixture)
		if err != nil {
			t.Fatal(err)
		}
		s := newSandbox(t)
		st, err := s.extract(t, data, Limits{}, Policy{RejectSpecialBits: true})
		if err != nil {
			t.Fatal(err)
		}
		if dt, _ := os.ReadFile(filepath.Join(s.root, "Dockerfile")); string(dt) != "FROM scratch\n" {
			t.Errorf("Dockerfile = %q", dt)
		}
		sum := sha256.Sum256(data)
		if st.Entries != 1 || st.Bytes != 13 || st.Compressed != int64(len(data)) || st.SHA256 != hex.EncodeToString(sum[:]) {
			t.Errorf("stats %+v", st)
		}
	})
	t.Run("empty archive", func(t *testing.T) {
		s := newSandbox(t)
		st, err := s.extract(t, makeTar(t, nil), Limits{}, Policy{})
		if err != nil || st.Entries != 0 || st.Compressed != 1024 {
			t.Errorf("stats %+v, %v", st, err)
		}
	})
	t.Run("at the limits", func(t *testing.T) {
		s := newSandbox(t)
		data := makeTar(t, []entry{{name: "a/b/c/d", body: strings.Repeat("x", 1000)}, {name: "e", body: ""}})
		if _, err := s.extract(t, data, Limits{Entries: 2, Depth: 4, UncompressedBytes: 1000, CompressedBytes: int64(len(data))}, Policy{}); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("root not empty", func(t *testing.T) {
		s := newSandbox(t)
		os.WriteFile(filepath.Join(s.root, "x"), nil, 0o644)
		if _, err := Extract(bytes.NewReader(plain), s.root, Limits{}, Policy{}); err == nil {
			t.Error("extracted into a non-empty root")
		}
	})
}

// bzip2Fixture is a .tar.bz2 holding Dockerfile ("FROM scratch\n"), made
// with GNU tar and bzip2 (Go has no bzip2 writer).
const bzip2Fixture = "QlpoOTFBWSZTWa89gAEAAHL/hMoQAkBAAH+ABQKRAGtsngAAAIAIIAB0GomBAAyGQGaQZCRoAAAAD7zSRWIID4AASHUPC0o4TISQFOyhu1waKEhDgCCgHBFWOiDrtQtIc9r3UhGKxvqeZESpTOUkhoJUrp90YMG0YYxgPxdyRThQkK89gAE="

func TestExtractReadError(t *testing.T) {
	s := newSandbox(t)
	boom := errors.New("connection reset")
	r := io.MultiReader(bytes.NewReader(gz(t, makeTar(t, []entry{{name: "f", body: strings.Repeat("z", 100000)}}))[:200]), errReader{boom})
	_, err := Extract(r, s.root, Limits{}, Policy{})
	if !errors.Is(err, boom) || errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), "reading the archive: connection reset") {
		t.Errorf("error %v: want the read error, not ErrInvalid", err)
	}
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

func TestSniff(t *testing.T) {
	tarData := makeTar(t, []entry{{name: "x", body: "y"}})
	for _, tc := range []struct {
		name  string
		data  []byte
		isTar bool
		err   string
	}{
		{"dockerfile", []byte("FROM scratch\nRUN echo " + strings.Repeat("x", 1000) + "\n"), false, ""},
		{"short dockerfile", []byte("FROM scratch\n"), false, ""},
		{"empty", nil, false, ""},
		{"tar", tarData, true, ""},
		{"empty tar", makeTar(t, nil), true, ""},
		{"gzip tar", gz(t, tarData), true, ""},
		{"gzip non-tar", gz(t, []byte("FROM scratch\n")), false, "gzip-compressed input does not hold a tar archive"},
		{"xz", []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}, false, "xz-compressed archives are not supported"},
		{"tar whose first name looks like bzip2", makeTar(t, []entry{{name: "BZh91AY&SY", body: "x"}}), true, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			br := bufio.NewReaderSize(bytes.NewReader(tc.data), 64<<10)
			isTar, err := Sniff(br)
			if tc.err != "" {
				wantErr(t, err, errdefs.ErrInvalid, tc.err)
				return
			}
			if err != nil || isTar != tc.isTar {
				t.Fatalf("isTar=%v err=%v, want %v", isTar, err, tc.isTar)
			}
			// Sniff consumed nothing: Extract reads the whole input.
			if isTar {
				s := newSandbox(t)
				st, err := Extract(br, s.root, Limits{}, Policy{})
				if err != nil || st.Compressed != int64(len(tc.data)) {
					t.Errorf("extract after sniff: %+v %v", st, err)
				}
			}
		})
	}
}

func TestResolveInRoot(t *testing.T) {
	s := newSandbox(t)
	if _, err := Extract(bytes.NewReader(makeTar(t, []entry{
		{name: "d/f", body: "x"},
		{name: "l", link: "d"},
		{name: "dot", link: "."},
		{name: "d/up", link: ".."},
	})), s.root, Limits{}, Policy{}); err != nil {
		t.Fatal(err)
	}
	for rel, want := range map[string]string{
		"d/f":          "d/f",
		"l/f":          "d/f",
		"dot/dot/l/f":  "d/f",
		"d/up/l/up/d":  "d",
		"missing/../l": "d",
		"l/missing":    "d/missing",
		"d/f/x/../..":  "d",
	} {
		got, err := ResolveInRoot(s.root, rel)
		if err != nil || got != filepath.Join(s.root, want) {
			t.Errorf("ResolveInRoot(%q) = %q, %v; want %q", rel, got, err, want)
		}
	}
	for rel, want := range map[string]string{
		"..":          "escapes the build context",
		"d/up/..":     "escapes the build context",
		"l/../..":     "escapes the build context",
		"/etc/passwd": "is absolute",
	} {
		_, err := ResolveInRoot(s.root, rel)
		wantErr(t, err, errdefs.ErrInvalid, want)
	}
}

func TestCopyHashed(t *testing.T) {
	data := []byte("some archive bytes")
	sum := sha256.Sum256(data)
	var buf bytes.Buffer
	dgst, n, err := CopyHashed(&buf, bytes.NewReader(data), int64(len(data)))
	if err != nil || dgst != hex.EncodeToString(sum[:]) || n != int64(len(data)) || !bytes.Equal(buf.Bytes(), data) {
		t.Errorf("CopyHashed = %q %d %v", dgst, n, err)
	}
	_, _, err = CopyHashed(io.Discard, bytes.NewReader(data), int64(len(data)-1))
	wantErr(t, err, errdefs.ErrInvalid, "archive is larger than the limit of 17 bytes")
}
