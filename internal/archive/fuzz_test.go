package archive

import (
	"archive/tar"
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/internal/errdefs"
)

var fuzzLimits = Limits{CompressedBytes: 1 << 20, UncompressedBytes: 1 << 20, Entries: 64, Depth: 16, Ratio: 1000}

// FuzzExtract extracts archives built from a line-per-entry description,
// "<type> <name> <arg>", so that the fuzzer explores names, link targets
// and entry orders rather than tar checksums. Types: f file (arg: body),
// d directory, l symlink (arg: target), h hardlink (arg: target), s setuid
// file, c char device, p fifo. "$OUT" stands for a directory outside root.
// Whatever the archive, nothing outside root changes, and a successful
// extraction holds nothing special, and its symlinks, kept as they are,
// never resolve outside root through ResolveInRoot.
func FuzzExtract(f *testing.F) {
	for _, seed := range []string{
		"f a/b hello\nl l a\nf l/x boom",
		"l link $OUT\nf link/keep x",
		"l s d/..\nl d .\nf s/x y",
		"d d\nl d/up ..\nl s d/up/d/up/..",
		"l a .\nl b a/a/a/../../..",
		"f t orig\nl w t\nf w new\nh h t\nf h other",
		"d sub\nl l sub\nh x l/f\nf ../x y\nf /abs y",
		"l a b\nl b a",
		"s bin/su x\nc dev/null\np fifo",
		"f ./a/./b/../c x\nd ./\nh h2 a/c",
	} {
		f.Add(seed, false, false)
		f.Add(seed, true, true)
	}
	f.Fuzz(func(t *testing.T, spec string, compress, strict bool) {
		s := newSandbox(t)
		var entries []entry
		for line := range strings.SplitSeq(spec, "\n") {
			fields := strings.SplitN(line, " ", 3)
			if len(fields) < 2 {
				continue
			}
			e := entry{name: fields[1]}
			arg := ""
			if len(fields) == 3 {
				arg = fields[2]
			}
			switch fields[0] {
			case "f":
				e.body = arg
			case "d":
				e.dir = true
			case "l":
				e.link, e.typ = arg, tar.TypeSymlink
			case "h":
				e.hardlink, e.typ = arg, tar.TypeLink
			case "s":
				e.body, e.mode = arg, 0o4755
			case "c":
				e.typ = tar.TypeChar
			case "p":
				e.typ = tar.TypeFifo
			default:
				continue
			}
			entries = append(entries, e)
		}
		entries = s.expand(entries)
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		for _, e := range entries {
			h := &tar.Header{Name: e.name, Mode: 0o644, Typeflag: tar.TypeReg, Size: int64(len(e.body))}
			switch {
			case e.dir:
				h.Typeflag, h.Size = tar.TypeDir, 0
			case e.typ != 0:
				h.Typeflag, h.Linkname, h.Size = e.typ, e.link+e.hardlink, 0
			}
			if e.mode != 0 {
				h.Mode = e.mode
			}
			if tw.WriteHeader(h) != nil {
				return // not encodable (a NUL in a name): nothing to test
			}
			tw.Write([]byte(e.body))
		}
		if tw.Close() != nil {
			return
		}
		data := buf.Bytes()
		if compress {
			data = gz(t, data)
		}
		checkExtract(t, s, data, Policy{RejectSpecialBits: strict})
	})
}

// FuzzExtractRaw extracts arbitrary bytes, seeded with real archives.
func FuzzExtractRaw(f *testing.F) {
	seed := makeTar(f, []entry{{name: "d/", dir: true}, {name: "d/f", body: "x"}, {name: "l", link: "d"}, {name: "h", hardlink: "d/f"}})
	f.Add(seed)
	f.Add(gz(f, seed))
	f.Add(makeTar(f, []entry{{name: "l", link: "../outside"}, {name: "l/keep", body: "x"}}))
	f.Fuzz(func(t *testing.T, data []byte) {
		checkExtract(t, newSandbox(t), data, Policy{})
	})
}

func checkExtract(t *testing.T, s *sandbox, data []byte, pol Policy) {
	_, err := s.extract(t, data, fuzzLimits, pol)
	if err != nil {
		if !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("error %q does not wrap ErrInvalid", err)
		}
		return
	}
	err = filepath.WalkDir(s.root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(s.root, p)
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			// Kept as it is, wherever it points (s.extract checked that
			// nothing outside changed); resolving it either stays inside
			// or is refused.
			if p, err := ResolveInRoot(s.root, filepath.ToSlash(rel)); err == nil && p != s.root && !strings.HasPrefix(p, s.root+string(filepath.Separator)) {
				t.Errorf("symlink %s resolves to %s, outside the root", rel, p)
			}
		case fi.Mode()&(fs.ModeDevice|fs.ModeCharDevice|fs.ModeNamedPipe|fs.ModeSocket) != 0:
			t.Errorf("%s is special: %v", rel, fi.Mode())
		case fi.Mode()&(fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky) != 0:
			t.Errorf("%s keeps special bits: %v", rel, fi.Mode())
		case fi.IsDir() && fi.Mode().Perm()&0o700 != 0o700:
			t.Errorf("directory %s is not owner-writable: %v", rel, fi.Mode())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(s.root); err != nil {
		t.Errorf("cannot remove the extracted tree: %v", err)
	}
}
