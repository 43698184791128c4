package engine

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/bzip2"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// tarLimits bound what extractTar accepts.
type tarLimits struct {
	entries int   // headers, of any type
	bytes   int64 // regular file content
}

// sniffArchive looks at the start of r. It returns whether r holds a tar
// archive (plain, gzip or bzip2 compressed) and a reader positioned at the
// start of the (decompressed) data.
func sniffArchive(r io.Reader) (isTar bool, rd io.Reader, err error) {
	br := bufio.NewReaderSize(r, 64<<10)
	magic, err := br.Peek(6)
	if err != nil && !errors.Is(err, io.EOF) {
		return false, nil, fmt.Errorf("reading stdin: %w", err)
	}
	if len(magic) == 0 {
		return false, nil, errors.New("stdin is empty")
	}
	var head []byte
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(br)
		if err != nil {
			return false, nil, fmt.Errorf("reading gzip stream: %w", err)
		}
		zbr := bufio.NewReaderSize(zr, 64<<10)
		head, _ = zbr.Peek(512)
		if !looksLikeTar(head) {
			return false, nil, errors.New("gzip-compressed stdin does not hold a tar archive")
		}
		return true, zbr, nil
	case bytes.HasPrefix(magic, []byte("BZh")):
		zbr := bufio.NewReaderSize(bzip2.NewReader(br), 64<<10)
		head, _ = zbr.Peek(512)
		if !looksLikeTar(head) {
			return false, nil, errors.New("bzip2-compressed stdin does not hold a tar archive")
		}
		return true, zbr, nil
	case bytes.HasPrefix(magic, []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}):
		return false, nil, errors.New("xz-compressed archives are not supported; use an uncompressed or gzip-compressed tar")
	case bytes.HasPrefix(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		return false, nil, errors.New("zstd-compressed archives are not supported; use an uncompressed or gzip-compressed tar")
	}
	head, _ = br.Peek(512)
	return looksLikeTar(head), br, nil
}

// looksLikeTar reports whether block is a tar header block (or the zero
// block that ends an empty archive), by its ustar magic or its checksum.
func looksLikeTar(block []byte) bool {
	if len(block) < 512 {
		return false
	}
	block = block[:512]
	if bytes.Equal(block, make([]byte, 512)) {
		return true
	}
	if string(block[257:262]) == "ustar" {
		return true
	}
	field := strings.TrimRight(strings.TrimSpace(string(block[148:156])), "\x00 ")
	want, err := strconv.ParseInt(field, 8, 64)
	if err != nil {
		return false
	}
	var unsigned, signed int64
	for i, b := range block {
		if i >= 148 && i < 156 {
			b = ' '
		}
		unsigned += int64(b)
		signed += int64(int8(b))
	}
	return want == unsigned || want == signed
}

// extractTar extracts the tar stream r into root, an existing empty
// directory, refusing anything that could reach outside root: absolute or
// escaping names, symlinks and hardlinks whose targets escape, writes
// through symlinks, and device or fifo nodes. Setuid, setgid and sticky
// bits are dropped. Errors name the offending entry.
func extractTar(r io.Reader, root string, lim tarLimits) error {
	type dirMeta struct {
		path  string
		mode  os.FileMode
		mtime time.Time
	}
	var (
		dirs     []dirMeta
		symlinks []string // rel paths
		entries  int
		total    int64
	)
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("reading tar archive: %w", err)
		}
		entries++
		if entries > lim.entries {
			return fmt.Errorf("archive has more than %d entries", lim.entries)
		}
		if hdr.Typeflag == tar.TypeXGlobalHeader {
			continue
		}
		rel, err := cleanEntryName(hdr.Name)
		if err != nil {
			return fmt.Errorf("entry %q: %w", hdr.Name, err)
		}
		if rel == "" {
			if hdr.Typeflag == tar.TypeDir {
				continue // "./"
			}
			return fmt.Errorf("entry %q: not a valid file name", hdr.Name)
		}
		if err := makeParents(root, rel); err != nil {
			return fmt.Errorf("entry %q: %w", hdr.Name, err)
		}
		target := filepath.Join(root, filepath.FromSlash(rel))
		perm := os.FileMode(hdr.Mode) & os.ModePerm // drops setuid, setgid, sticky

		switch hdr.Typeflag {
		case tar.TypeDir:
			exists, err := clearPath(target, true)
			if err != nil {
				return fmt.Errorf("entry %q: %w", hdr.Name, err)
			}
			if !exists {
				if err := os.Mkdir(target, 0o700); err != nil {
					return fmt.Errorf("entry %q: %w", hdr.Name, err)
				}
			}
			dirs = append(dirs, dirMeta{path: target, mode: perm | 0o700, mtime: hdr.ModTime})

		case tar.TypeReg, '\x00': // '\x00' is the pre-POSIX regular file flag
			if hdr.Size < 0 || hdr.Size > lim.bytes-total {
				return fmt.Errorf("entry %q: archive content exceeds the limit of %d bytes", hdr.Name, lim.bytes)
			}
			if _, err := clearPath(target, false); err != nil {
				return fmt.Errorf("entry %q: %w", hdr.Name, err)
			}
			if err := writeFile(target, tr, hdr.Size, perm); err != nil {
				return fmt.Errorf("entry %q: %w", hdr.Name, err)
			}
			total += hdr.Size
			if !hdr.ModTime.IsZero() {
				_ = os.Chtimes(target, hdr.ModTime, hdr.ModTime)
			}

		case tar.TypeSymlink:
			if err := checkSymlinkTarget(rel, hdr.Linkname); err != nil {
				return fmt.Errorf("entry %q: %w", hdr.Name, err)
			}
			if _, err := clearPath(target, false); err != nil {
				return fmt.Errorf("entry %q: %w", hdr.Name, err)
			}
			if err := os.Symlink(hdr.Linkname, target); err != nil {
				return fmt.Errorf("entry %q: %w", hdr.Name, err)
			}
			symlinks = append(symlinks, rel)

		case tar.TypeLink:
			src, err := hardlinkSource(root, hdr.Linkname)
			if err != nil {
				return fmt.Errorf("entry %q: hardlink to %q: %w", hdr.Name, hdr.Linkname, err)
			}
			if src == target {
				continue
			}
			if _, err := clearPath(target, false); err != nil {
				return fmt.Errorf("entry %q: %w", hdr.Name, err)
			}
			if err := os.Link(src, target); err != nil {
				return fmt.Errorf("entry %q: %w", hdr.Name, err)
			}

		case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
			return fmt.Errorf("entry %q: device and fifo nodes are not allowed in a build context", hdr.Name)

		default:
			return fmt.Errorf("entry %q: unsupported tar entry type %q", hdr.Name, string(hdr.Typeflag))
		}
	}

	// Every symlink was checked lexically when it was written; now that
	// the tree is complete, resolve each through the links it passes
	// (a -> ., b -> a/..) to catch chains that escape.
	for _, rel := range symlinks {
		if _, err := resolveInRoot(root, rel); err != nil {
			return fmt.Errorf("entry %q: %w", rel, err)
		}
	}
	// Apply directory modes and times last, deepest first, so restrictive
	// modes do not block writing their contents.
	for i := len(dirs) - 1; i >= 0; i-- {
		d := dirs[i]
		if err := os.Chmod(d.path, d.mode); err != nil {
			return err
		}
		if !d.mtime.IsZero() {
			_ = os.Chtimes(d.path, d.mtime, d.mtime)
		}
	}
	return nil
}

// cleanEntryName returns the cleaned, slash-separated path of an archive
// entry relative to the root ("" for the root itself), or an error when it
// is absolute or escapes the root.
func cleanEntryName(name string) (string, error) {
	if name == "" {
		return "", errors.New("empty name")
	}
	if strings.ContainsRune(name, 0) {
		return "", errors.New("name contains a NUL byte")
	}
	if path.IsAbs(name) || filepath.IsAbs(name) {
		return "", errors.New("absolute paths are not allowed")
	}
	p := path.Clean(name)
	if p == ".." || strings.HasPrefix(p, "../") {
		return "", errors.New("path escapes the build context")
	}
	if p == "." {
		return "", nil
	}
	return p, nil
}

// makeParents creates the missing parent directories of rel inside root,
// refusing to go through a symlink or a non-directory.
func makeParents(root, rel string) error {
	dir := path.Dir(rel)
	if dir == "." {
		return nil
	}
	cur := root
	for _, c := range strings.Split(dir, "/") {
		cur = filepath.Join(cur, c)
		fi, err := os.Lstat(cur)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if err := os.Mkdir(cur, 0o755); err != nil {
				return err
			}
		case err != nil:
			return err
		case fi.Mode()&os.ModeSymlink != 0:
			return fmt.Errorf("refusing to write through symlink %q", relTo(root, cur))
		case !fi.IsDir():
			return fmt.Errorf("parent %q is not a directory", relTo(root, cur))
		}
	}
	return nil
}

// clearPath prepares target for a new entry. An existing directory is kept
// for a directory entry (exists=true) and is an error otherwise; any other
// existing file or link is removed (later entries replace earlier ones).
func clearPath(target string, forDir bool) (exists bool, err error) {
	fi, err := os.Lstat(target)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if fi.IsDir() {
		if forDir {
			return true, nil
		}
		return false, errors.New("would replace a directory")
	}
	return false, os.Remove(target)
}

// writeFile creates target (which must not exist, and is never followed if
// it is a link) and copies size bytes from r into it.
func writeFile(target string, r io.Reader, size int64, perm os.FileMode) error {
	f, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	n, err := io.Copy(f, io.LimitReader(r, size))
	if err == nil && n != size {
		err = io.ErrUnexpectedEOF
	}
	if err == nil {
		err = f.Chmod(perm)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// checkSymlinkTarget rejects a link at rel whose target is absolute or
// lexically outside the root.
func checkSymlinkTarget(rel, link string) error {
	if link == "" {
		return errors.New("symlink with an empty target")
	}
	if path.IsAbs(link) {
		return fmt.Errorf("symlink target %q is absolute and escapes the build context", link)
	}
	p := path.Join(path.Dir(rel), link)
	if p == ".." || strings.HasPrefix(p, "../") {
		return fmt.Errorf("symlink target %q escapes the build context", link)
	}
	return nil
}

// hardlinkSource returns the absolute path of a hardlink's target: a
// regular file already extracted inside root, reached without symlinks.
func hardlinkSource(root, link string) (string, error) {
	rel, err := cleanEntryName(link)
	if err != nil {
		return "", err
	}
	if rel == "" {
		return "", errors.New("target is the archive root")
	}
	cur := root
	parts := strings.Split(rel, "/")
	for i, c := range parts {
		cur = filepath.Join(cur, c)
		fi, err := os.Lstat(cur)
		if errors.Is(err, fs.ErrNotExist) {
			return "", errors.New("target is not in the archive (before this entry)")
		}
		if err != nil {
			return "", err
		}
		if fi.Mode()&os.ModeSymlink != 0 {
			return "", fmt.Errorf("target path goes through symlink %q", relTo(root, cur))
		}
		if i == len(parts)-1 && !fi.Mode().IsRegular() {
			return "", errors.New("target is not a regular file")
		}
	}
	return cur, nil
}

// resolveInRoot resolves the slash-separated path rel inside root,
// following symlinks as the kernel would but treating root as "/" for
// nothing: any step above root, or any absolute link, is an error.
// Components that do not exist are resolved lexically.
func resolveInRoot(root, rel string) (string, error) {
	var done []string
	todo := strings.Split(rel, "/")
	hops := 0
	for len(todo) > 0 {
		c := todo[0]
		todo = todo[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			if len(done) == 0 {
				return "", fmt.Errorf("%q escapes the build context", rel)
			}
			done = done[:len(done)-1]
			continue
		}
		cur := filepath.Join(root, filepath.Join(done...), c)
		fi, err := os.Lstat(cur)
		if errors.Is(err, fs.ErrNotExist) {
			done = append(done, c)
			continue
		}
		if err != nil {
			return "", err
		}
		if fi.Mode()&os.ModeSymlink == 0 {
			done = append(done, c)
			continue
		}
		hops++
		if hops > 255 {
			return "", fmt.Errorf("%q: too many levels of symbolic links", rel)
		}
		link, err := os.Readlink(cur)
		if err != nil {
			return "", err
		}
		if path.IsAbs(link) {
			return "", fmt.Errorf("%q: symlink %q is absolute and escapes the build context", rel, link)
		}
		todo = append(strings.Split(link, "/"), todo...)
	}
	return filepath.Join(root, filepath.Join(done...)), nil
}

func relTo(root, p string) string {
	if r, err := filepath.Rel(root, p); err == nil {
		return filepath.ToSlash(r)
	}
	return p
}
