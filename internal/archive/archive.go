package archive

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/bzip2"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/kiln-dev/kiln/internal/errdefs"
)

// Limits bound an archive. A zero (or negative) field takes DefaultLimits'
// value.
type Limits struct {
	// CompressedBytes bounds the bytes read from the input: the archive as
	// stored or sent, compressed or not.
	CompressedBytes int64
	// UncompressedBytes bounds the sum of regular-file sizes.
	UncompressedBytes int64
	// Entries bounds the tar headers read, of any type.
	Entries int
	// Depth bounds the path components of any entry's name.
	Depth int
	// Ratio bounds how many times more data the archive may expand to than
	// the input read so far. It is checked as the stream is read, once more
	// than 1 MiB has come out.
	Ratio int
}

// DefaultLimits returns the limits a zero Limits field stands for.
func DefaultLimits() Limits {
	return Limits{
		CompressedBytes:   1 << 30,
		UncompressedBytes: 4 << 30,
		Entries:           200_000,
		Depth:             64,
		Ratio:             200,
	}
}

func (l Limits) withDefaults() Limits {
	d := DefaultLimits()
	if l.CompressedBytes <= 0 {
		l.CompressedBytes = d.CompressedBytes
	}
	if l.UncompressedBytes <= 0 {
		l.UncompressedBytes = d.UncompressedBytes
	}
	if l.Entries <= 0 {
		l.Entries = d.Entries
	}
	if l.Depth <= 0 {
		l.Depth = d.Depth
	}
	if l.Ratio <= 0 {
		l.Ratio = d.Ratio
	}
	return l
}

// Policy says what to do with things that are not plainly safe.
type Policy struct {
	// RejectSpecialBits makes a setuid, setgid or sticky bit on a file or
	// directory an error (for untrusted uploads) instead of being dropped
	// (for the CLI's stdin).
	RejectSpecialBits bool
}

// Stats describe an extracted archive. They are complete only when Extract
// returns no error.
type Stats struct {
	Entries    int    // tar headers read, of any type
	Bytes      int64  // sum of regular-file sizes
	Compressed int64  // bytes read from the input: all of it
	SHA256     string // hex SHA-256 of the bytes read from the input
}

const (
	blockSize = 512
	// peekSize is how much of the input is buffered, and so how much a
	// compressed archive may need before its first tar block comes out.
	peekSize = 64 << 10
	// ratioGrace is how much may come out before the ratio is checked, so
	// that small, very compressible archives pass.
	ratioGrace = 1 << 20
	// maxHops bounds the symlinks followed resolving one path (Linux's
	// MAXSYMLINKS).
	maxHops = 40
	// maxDirTimes bounds the memory spent remembering directory times to
	// restore at the end; past it, later directories keep the time of
	// extraction.
	maxDirTimes = 16 << 20

	modeSetuid = 0o4000 // mode bits as tar stores them
	modeSetgid = 0o2000
	modeSticky = 0o1000
)

// Extract reads a tar archive from r — plain, gzip- or bzip2-compressed,
// told apart by its first bytes — into root, an existing empty directory.
// It never creates anything outside root and never follows a link while
// writing, provided nobody else writes into root meanwhile (make it private:
// 0700, in a directory of the caller's own). Errors name the entry and the
// problem; see the package comment. On error root holds a partial tree,
// which the caller removes; every directory in it is owner-writable.
func Extract(r io.Reader, root string, lim Limits, pol Policy) (Stats, error) {
	x := &extractor{root: root, lim: lim.withDefaults(), pol: pol}
	err := x.run(r)
	st := Stats{Entries: x.entries, Bytes: x.bytes}
	if x.src != nil {
		st.Compressed = x.src.n
		st.SHA256 = hex.EncodeToString(x.src.h.Sum(nil))
	}
	return st, err
}

// Sniff reports whether br starts like an archive Extract reads: a tar,
// plain or gzip- or bzip2-compressed. It only peeks, so br can be handed to
// Extract afterwards. Empty input, or input that is not an archive at all,
// is (false, nil); a compressed stream that does not hold a tar, or an xz,
// zstd or zip archive, is an error wrapping errdefs.ErrInvalid; read errors
// are returned as they are. br's buffer must hold the start of a compressed
// archive up to its first tar block: use bufio.NewReaderSize(r, 64<<10).
func Sniff(br *bufio.Reader) (bool, error) {
	head, err := peek(br, blockSize)
	if err != nil {
		return false, err
	}
	f := detect(head)
	switch {
	case f == formatTar:
		return true, nil
	case f == formatNone:
		return false, nil
	case f.unsupported():
		return false, f.unsupportedErr()
	}
	raw, err := peek(br, min(br.Size(), peekSize))
	if err != nil {
		return false, err
	}
	zr, err := f.decoder(bytes.NewReader(raw))
	if err == nil {
		block := make([]byte, blockSize)
		if _, err = io.ReadFull(zr, block); err == nil && looksLikeTar(block) {
			return true, nil
		}
	}
	return false, invalidf("%s-compressed input does not hold a tar archive", f)
}

// CopyHashed copies src to dst and returns the hex SHA-256 of the bytes
// copied and their count. More than max bytes (0 takes DefaultLimits'
// CompressedBytes) is an error wrapping errdefs.ErrInvalid, after which dst
// holds a prefix the caller discards. Read and write errors are returned
// as they are.
func CopyHashed(dst io.Writer, src io.Reader, max int64) (sha256hex string, n int64, err error) {
	if max <= 0 {
		max = DefaultLimits().CompressedBytes
	}
	h := sha256.New()
	n, err = io.Copy(io.MultiWriter(dst, h), io.LimitReader(src, max+1))
	if err != nil {
		return "", n, err
	}
	if n > max {
		return "", n, tooLarge(max)
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// ResolveInRoot resolves rel, a slash-separated path relative to root,
// following symlinks as the kernel would, and returns the path it names
// inside root. A step above root or through an absolute symlink is an error
// wrapping errdefs.ErrInvalid, as is a loop. Components that do not exist
// are resolved lexically.
func ResolveInRoot(root, rel string) (string, error) {
	if path.IsAbs(rel) {
		return "", invalidf("%s is absolute; it must name a path inside the build context", quote(rel))
	}
	r := resolver{root: root, budget: 1 << 16}
	p, err := r.resolve(rel)
	if err != nil {
		var ae *archiveError
		if errors.As(err, &ae) {
			return "", &archiveError{msg: quote(rel) + ": " + ae.msg, kind: ae.kind, cause: ae.cause}
		}
		return "", &archiveError{msg: quote(rel) + ": " + errnoText(err), kind: osKind(err), cause: err}
	}
	return p, nil
}

// extractor is the state of one Extract call.
type extractor struct {
	root string
	lim  Limits
	pol  Policy

	src *source  // the input: counted, hashed, bounded
	dec *decoded // the tar stream, as the tar reader consumes it

	entries  int   // headers read
	bytes    int64 // sum of regular-file sizes
	content  int64 // file bytes read out of the tar reader, sparse holes included
	dirTimes []dirTime
	timeMem  int // bytes of names in dirTimes
	buf      []byte
}

type dirTime struct {
	rel   string
	mtime time.Time
}

func (x *extractor) run(r io.Reader) error {
	if err := checkRoot(x.root); err != nil {
		return err
	}
	x.src = &source{r: r, h: sha256.New(), max: x.lim.CompressedBytes}
	raw := bufio.NewReaderSize(x.src, peekSize)
	stream, err := x.open(raw)
	if err != nil {
		return err
	}
	x.dec = &decoded{r: stream, x: x}
	x.buf = make([]byte, 32<<10)
	if err := x.extractAll(tar.NewReader(x.dec)); err != nil {
		return err
	}
	// Read to the end of the compressed stream, so that its trailer (sizes
	// and checksums) is checked, and of the input, so that the digest
	// covers all of it.
	if _, err := io.CopyBuffer(io.Discard, x.dec, x.buf); err != nil {
		return streamErr(err)
	}
	if _, err := io.CopyBuffer(io.Discard, raw, x.buf); err != nil {
		return streamErr(err)
	}
	// Creating entries changed directory times; restore them last.
	for _, d := range x.dirTimes {
		_ = os.Chtimes(filepath.Join(x.root, filepath.FromSlash(d.rel)), d.mtime, d.mtime)
	}
	return nil
}

// checkRoot checks that root is an empty directory.
func checkRoot(root string) error {
	f, err := os.OpenFile(root, os.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("extraction root: %s", errnoText(err))
	}
	defer f.Close()
	if names, _ := f.Readdirnames(1); len(names) > 0 {
		return errors.New("extraction root is not empty")
	}
	return nil
}

// open tells the archive's format from its first bytes and returns the
// tar stream inside it.
func (x *extractor) open(raw *bufio.Reader) (io.Reader, error) {
	head, err := peek(raw, blockSize)
	if err != nil {
		return nil, streamErr(err)
	}
	if len(head) == 0 {
		return nil, invalidf("archive is empty")
	}
	f := detect(head)
	switch {
	case f == formatTar:
		return raw, nil
	case f == formatNone:
		return nil, invalidf("not a tar archive: send a tar, optionally gzip- or bzip2-compressed")
	case f.unsupported():
		return nil, f.unsupportedErr()
	}
	zr, err := f.decoder(raw)
	if err != nil {
		return nil, streamErr(err)
	}
	dbr := bufio.NewReaderSize(zr, 8*blockSize)
	block, err := peek(dbr, blockSize)
	if err != nil {
		return nil, streamErr(err)
	}
	if !looksLikeTar(block) {
		return nil, invalidf("%s-compressed data does not hold a tar archive", f)
	}
	return dbr, nil
}

func (x *extractor) extractAll(tr *tar.Reader) error {
	for {
		x.dec.startHeader()
		hdr, err := tr.Next()
		if errors.Is(err, tar.ErrInsecurePath) && hdr != nil {
			err = nil // with GODEBUG=tarinsecurepath=0; entry checks names itself
		}
		if errors.Is(err, io.EOF) {
			if !x.dec.sawEndMarker() {
				return streamErr(io.ErrUnexpectedEOF)
			}
			return nil
		}
		if err != nil {
			return streamErr(err)
		}
		x.entries++
		if x.entries > x.lim.Entries {
			return invalidf("archive has more than %d entries (the limit)", x.lim.Entries)
		}
		if err := x.entry(tr, hdr); err != nil {
			return entryErr(hdr.Name, err)
		}
	}
}

// CheckHeader applies the rules for one entry that its header alone
// decides: its type (no devices or fifos), its name (relative, inside the
// root, not too deep), its mode bits under pol, and a symlink's target
// (any target, kept as it is and never followed: only an empty one or one
// with a NUL byte is refused). It returns the entry's cleaned slash path
// relative to the root; "" (and no error) for an entry Extract skips: a
// global header or the root directory itself.
//
// Extract applies it to every entry; the CLI applies it to every file of a
// context it packs, so that a context the server would refuse fails before
// the upload, naming the file. The rules that depend on earlier entries
// (writes through symlinks, hardlink targets) cannot arise from a packed
// directory tree, which has neither.
func CheckHeader(hdr *tar.Header, lim Limits, pol Policy) (string, error) {
	lim = lim.withDefaults()
	isReg, isDir := false, false
	switch hdr.Typeflag {
	case tar.TypeXGlobalHeader:
		return "", nil
	case tar.TypeReg, '\x00', tar.TypeGNUSparse: // '\x00': pre-POSIX regular file
		isReg = true
	case tar.TypeDir:
		isDir = true
	case tar.TypeSymlink, tar.TypeLink:
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		return "", reject("device and fifo nodes are not allowed in a build context")
	default:
		return "", reject("unsupported tar entry type %q", string(hdr.Typeflag))
	}

	rel, err := cleanName(hdr.Name)
	if err != nil {
		return "", err
	}
	if rel == "" {
		if isDir {
			return "", nil // "./"
		}
		return "", reject("not a valid file name")
	}
	if n := strings.Count(rel, "/") + 1; n > lim.Depth {
		return "", reject("path is deeper than %d components (the limit)", lim.Depth)
	}
	if bits := hdr.Mode & (modeSetuid | modeSetgid | modeSticky); bits != 0 && (isReg || isDir) && pol.RejectSpecialBits {
		return "", reject("%s not allowed in a build context (mode %04o)", describeBits(bits), hdr.Mode&0o7777)
	}
	if hdr.Typeflag == tar.TypeSymlink {
		if err := checkSymlinkTarget(hdr.Linkname); err != nil {
			return "", err
		}
	}
	return rel, nil
}

// entry extracts one entry. Its errors are completed by entryErr.
func (x *extractor) entry(tr *tar.Reader, hdr *tar.Header) error {
	rel, err := CheckHeader(hdr, x.lim, x.pol)
	if err != nil || rel == "" {
		return err
	}
	isReg := hdr.Typeflag == tar.TypeReg || hdr.Typeflag == '\x00' || hdr.Typeflag == tar.TypeGNUSparse
	isDir := hdr.Typeflag == tar.TypeDir
	perm := os.FileMode(hdr.Mode) & os.ModePerm // drops setuid, setgid, sticky
	if isReg && (hdr.Size < 0 || hdr.Size > x.lim.UncompressedBytes-x.bytes) {
		return reject("archive content exceeds the limit of %s uncompressed", human(x.lim.UncompressedBytes))
	}

	if err := makeParents(x.root, rel); err != nil {
		return err
	}
	target := filepath.Join(x.root, filepath.FromSlash(rel))

	switch {
	case isDir:
		exists, err := clearPath(target, true)
		if err != nil {
			return err
		}
		if !exists {
			if err := os.Mkdir(target, 0o700); err != nil {
				return err
			}
		}
		// The owner keeps rwx so that later entries can be written
		// inside, and the caller can remove the tree.
		if err := os.Chmod(target, perm|0o700); err != nil {
			return err
		}
		if !hdr.ModTime.IsZero() && x.timeMem+len(rel) <= maxDirTimes {
			x.dirTimes = append(x.dirTimes, dirTime{rel: rel, mtime: hdr.ModTime})
			x.timeMem += len(rel)
		}

	case isReg:
		if _, err := clearPath(target, false); err != nil {
			return err
		}
		if err := x.writeFile(target, tr, hdr.Size, perm); err != nil {
			return err
		}
		x.bytes += hdr.Size
		if !hdr.ModTime.IsZero() {
			_ = os.Chtimes(target, hdr.ModTime, hdr.ModTime)
		}

	case hdr.Typeflag == tar.TypeSymlink:
		if _, err := clearPath(target, false); err != nil {
			return err
		}
		if err := os.Symlink(hdr.Linkname, target); err != nil {
			return err
		}

	default: // tar.TypeLink
		src, err := hardlinkSource(x.root, hdr.Linkname)
		if err != nil {
			return prefix(fmt.Sprintf("hardlink to %s", quote(hdr.Linkname)), err)
		}
		if src == target {
			return nil
		}
		if _, err := clearPath(target, false); err != nil {
			return err
		}
		if err := os.Link(src, target); err != nil {
			return err
		}
	}
	return nil
}

// writeFile creates target, which must not exist and is never followed if
// it is a link, and copies size bytes of the current entry into it.
func (x *extractor) writeFile(target string, tr *tar.Reader, size int64, perm os.FileMode) error {
	f, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	err = x.copyContent(f, tr, size)
	if err == nil {
		err = f.Chmod(perm)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func (x *extractor) copyContent(f *os.File, tr *tar.Reader, size int64) error {
	for size > 0 {
		k, rerr := io.ReadFull(tr, x.buf[:min(size, int64(len(x.buf)))])
		x.content += int64(k)
		if err := x.checkRatio(); err != nil {
			return err
		}
		if _, err := f.Write(x.buf[:k]); err != nil {
			return err
		}
		size -= int64(k)
		if rerr != nil {
			if errors.Is(rerr, io.EOF) {
				rerr = io.ErrUnexpectedEOF
			}
			return streamErr(rerr)
		}
	}
	return nil
}

// checkRatio fails once the archive has expanded more than lim.Ratio
// times. What came out is the larger of the decompressed stream and the
// file content (which sparse holes can make larger than the stream).
func (x *extractor) checkRatio() error {
	out, in := max(x.dec.n, x.content), max(x.src.n, 1)
	if out <= ratioGrace || float64(out) <= float64(x.lim.Ratio)*float64(in) {
		return nil
	}
	return invalidf("archive expands more than %dx (%s from %s): refusing a possible archive bomb",
		x.lim.Ratio, human(out), human(in))
}

// source reads the input: it counts and hashes every byte, and fails past
// max bytes.
type source struct {
	r   io.Reader
	h   hash.Hash
	n   int64
	max int64
}

func (s *source) Read(p []byte) (int, error) {
	if s.n > s.max {
		return 0, tooLarge(s.max)
	}
	if room := s.max + 1 - s.n; int64(len(p)) > room {
		p = p[:room]
	}
	k, err := s.r.Read(p)
	s.h.Write(p[:k])
	s.n += int64(k)
	if s.n > s.max {
		return k, tooLarge(s.max)
	}
	if err != nil && !errors.Is(err, io.EOF) {
		err = &archiveError{msg: "reading the archive: " + errnoText(err), cause: err, whole: true}
	}
	return k, err
}

// decoded reads the tar stream for the tar reader. It counts what comes
// out for the ratio limit, and remembers how many zero bytes end what was
// read since the last startHeader, which tells a proper end-of-archive
// marker from a stream cut at a block boundary.
type decoded struct {
	r     io.Reader
	x     *extractor
	n     int64 // bytes read
	zeros int64 // trailing zero bytes of those read since startHeader
}

func (d *decoded) Read(p []byte) (int, error) {
	k, err := d.r.Read(p)
	d.n += int64(k)
	i := k
	for i > 0 && p[i-1] == 0 {
		i--
	}
	if i == 0 {
		d.zeros += int64(k)
	} else {
		d.zeros = int64(k - i)
	}
	if rerr := d.x.checkRatio(); rerr != nil {
		return k, rerr
	}
	return k, err
}

func (d *decoded) startHeader() { d.zeros = 0 }

// sawEndMarker reports whether the tar reader's io.EOF came from the zero
// block that ends an archive rather than from the stream running out. What
// Next reads before a header is the padding of the previous entry (fewer
// than 512 bytes) and header blocks; so if the last 512 bytes it read are
// zero, it read a zero header block.
func (d *decoded) sawEndMarker() bool { return d.zeros >= blockSize }

// format is an archive's outer format.
type format int

const (
	formatNone format = iota
	formatTar
	formatGzip
	formatBzip2
	formatXz
	formatZstd
	formatZip
)

func (f format) String() string {
	return [...]string{"unknown", "tar", "gzip", "bzip2", "xz", "zstd", "zip"}[f]
}

func (f format) unsupported() bool { return f >= formatXz }

func (f format) unsupportedErr() error {
	if f == formatZip {
		return invalidf("zip archives are not supported: send a tar, optionally gzip- or bzip2-compressed")
	}
	return invalidf("%s-compressed archives are not supported: send a tar, optionally gzip- or bzip2-compressed", f)
}

func (f format) decoder(r io.Reader) (io.Reader, error) {
	if f == formatGzip {
		return gzip.NewReader(r)
	}
	return bzip2.NewReader(r), nil
}

// detect tells an archive's format from its first bytes (up to a block).
// A tar header wins over a compression magic it happens to start with.
func detect(head []byte) format {
	switch {
	case looksLikeTar(head):
		return formatTar
	case bytes.HasPrefix(head, []byte{0x1f, 0x8b}):
		return formatGzip
	case len(head) >= 4 && bytes.HasPrefix(head, []byte("BZh")) && head[3] >= '1' && head[3] <= '9':
		return formatBzip2
	case bytes.HasPrefix(head, []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}):
		return formatXz
	case bytes.HasPrefix(head, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		return formatZstd
	case bytes.HasPrefix(head, []byte("PK\x03\x04")):
		return formatZip
	}
	return formatNone
}

// looksLikeTar reports whether block is a tar header block (or the zero
// block that ends an empty archive), by its ustar magic or its checksum.
func looksLikeTar(block []byte) bool {
	if len(block) < blockSize {
		return false
	}
	block = block[:blockSize]
	if bytes.Equal(block, make([]byte, blockSize)) {
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

// peek returns up to n bytes from the start of br; fewer only at the end of
// the input.
func peek(br *bufio.Reader, n int) ([]byte, error) {
	b, err := br.Peek(n)
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, bufio.ErrBufferFull) {
		return nil, err
	}
	return b, nil
}

// cleanName returns the cleaned, slash-separated path of an entry relative
// to the root ("" for the root itself), or an error when it is absolute or
// escapes the root.
func cleanName(name string) (string, error) {
	if name == "" {
		return "", reject("empty name")
	}
	if strings.IndexByte(name, 0) >= 0 {
		return "", reject("name contains a NUL byte")
	}
	if path.IsAbs(name) || filepath.IsAbs(name) {
		return "", reject("absolute paths are not allowed")
	}
	p := path.Clean(name)
	if p == ".." || strings.HasPrefix(p, "../") {
		return "", reject("path escapes the build context")
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
	for c := range strings.SplitSeq(dir, "/") {
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
			// Links are kept as they are and may point anywhere, so a write
			// through one could land anywhere.
			return reject("refusing to write through symlink %s (a link may point anywhere; a write through it escapes the build context)", quote(relTo(root, cur)))
		case !fi.IsDir():
			return reject("parent %s is not a directory", quote(relTo(root, cur)))
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
		return false, reject("would replace a directory")
	}
	return false, os.Remove(target)
}

// checkSymlinkTarget rejects a link target that cannot be a path. Any
// other target, absolute or climbing out of the root, is kept as it is, as
// BuildKit's COPY keeps it: extraction never follows a link, and
// ResolveInRoot refuses to resolve a path through one that leaves the root.
func checkSymlinkTarget(link string) error {
	switch {
	case link == "":
		return reject("symlink with an empty target")
	case strings.IndexByte(link, 0) >= 0:
		return reject("symlink target contains a NUL byte")
	}
	return nil
}

// hardlinkSource returns the path of a hardlink's target: a regular file
// already extracted inside root, reached without symlinks.
func hardlinkSource(root, link string) (string, error) {
	rel, err := cleanName(link)
	if err != nil {
		return "", err
	}
	if rel == "" {
		return "", reject("target is the root of the build context")
	}
	cur := root
	parts := strings.Split(rel, "/")
	for i, c := range parts {
		cur = filepath.Join(cur, c)
		fi, err := os.Lstat(cur)
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
			return "", reject("target is not in the archive (before this entry)")
		}
		if err != nil {
			return "", err
		}
		if fi.Mode()&os.ModeSymlink != 0 {
			return "", reject("target path goes through symlink %s", quote(relTo(root, cur)))
		}
		if i == len(parts)-1 && !fi.Mode().IsRegular() {
			return "", reject("target is not a regular file")
		}
	}
	return cur, nil
}

// resolver resolves paths inside root, within a budget of path components
// looked at, so that hostile symlink chains cannot make it work for long.
type resolver struct {
	root   string
	budget int64
}

// resolve resolves rel inside root, following symlinks as the kernel would
// but failing on any step above root and any absolute link. Components that
// do not exist (or sit under a non-directory) are taken lexically.
func (r *resolver) resolve(rel string) (string, error) {
	var (
		done []string // resolved components
		real int      // how many of done exist on disk
		hops int
		todo = strings.Split(rel, "/")
	)
	for len(todo) > 0 {
		r.budget--
		if r.budget < 0 {
			return "", reject("symlinks are too tangled to check")
		}
		c := todo[0]
		todo = todo[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			if len(done) == 0 {
				return "", reject("escapes the build context")
			}
			if real == len(done) {
				real--
			}
			done = done[:len(done)-1]
			continue
		}
		if real < len(done) { // under something missing: nothing to look at
			done = append(done, c)
			continue
		}
		cur := filepath.Join(r.root, filepath.Join(done...), c)
		fi, err := os.Lstat(cur)
		switch {
		case errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR):
			done = append(done, c)
			continue
		case err != nil:
			return "", err
		case fi.Mode()&os.ModeSymlink == 0:
			done = append(done, c)
			real++
			continue
		}
		hops++
		if hops > maxHops {
			return "", reject("too many levels of symbolic links")
		}
		link, err := os.Readlink(cur)
		if err != nil {
			return "", err
		}
		if path.IsAbs(link) {
			return "", reject("goes through absolute symlink %s", quote(relTo(r.root, cur)))
		}
		todo = append(strings.Split(link, "/"), todo...)
	}
	return filepath.Join(r.root, filepath.Join(done...)), nil
}

func relTo(root, p string) string {
	if r, err := filepath.Rel(root, p); err == nil {
		return filepath.ToSlash(r)
	}
	return p
}

// archiveError is every error the package makes. Its text is only msg:
// complete, naming the entry and the problem, and never a server path.
type archiveError struct {
	msg   string
	kind  error // an errdefs sentinel, or nil for failures of the host (disk, reading the input)
	cause error // optional
	whole bool  // about the archive as a whole: entryErr adds no entry name
}

func (e *archiveError) Error() string { return e.msg }

func (e *archiveError) Unwrap() []error {
	var errs []error
	if e.kind != nil {
		errs = append(errs, e.kind)
	}
	if e.cause != nil {
		errs = append(errs, e.cause)
	}
	return errs
}

// reject returns an error about the current entry, to be named by entryErr.
func reject(format string, args ...any) error {
	return &archiveError{msg: fmt.Sprintf(format, args...), kind: errdefs.ErrInvalid}
}

func invalidf(format string, args ...any) error {
	return &archiveError{msg: fmt.Sprintf(format, args...), kind: errdefs.ErrInvalid, whole: true}
}

func tooLarge(max int64) error {
	return invalidf("archive is larger than the limit of %s", human(max))
}

// streamErr turns an error from reading the tar stream into the package's
// error: errors the package made pass as they are; anything else comes from
// the tar or compression reader and means the input is bad.
func streamErr(err error) error {
	var ae *archiveError
	if errors.As(err, &ae) {
		return ae
	}
	if errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return &archiveError{msg: "archive is truncated or corrupt: " + err.Error(), kind: errdefs.ErrInvalid, cause: err, whole: true}
}

// prefix puts p before the text of an entry error.
func prefix(p string, err error) error {
	var ae *archiveError
	if errors.As(err, &ae) {
		if ae.whole {
			return ae
		}
		return &archiveError{msg: p + ": " + ae.msg, kind: ae.kind, cause: ae.cause}
	}
	return &archiveError{msg: p + ": " + errnoText(err), kind: osKind(err), cause: err}
}

// entryErr names the entry in err, unless err is about the whole archive.
// A file system error keeps only its errno text: no server path.
func entryErr(name string, err error) error {
	var ae *archiveError
	if errors.As(err, &ae) && ae.whole {
		return ae
	}
	e := prefix("entry "+quote(name), err).(*archiveError)
	e.whole = true
	return e
}

// errnoText is the text of err without the path an *fs.PathError or
// *os.LinkError carries.
func errnoText(err error) string {
	var pe *fs.PathError
	var le *os.LinkError
	var se *os.SyscallError
	switch {
	case errors.As(err, &pe):
		return pe.Err.Error()
	case errors.As(err, &le):
		return le.Err.Error()
	case errors.As(err, &se):
		return se.Err.Error()
	}
	return err.Error()
}

// osKind classifies a file system error met while extracting: a full disk
// is exhaustion; names the file system refuses are the archive's fault;
// anything else is the host's, with no kind.
func osKind(err error) error {
	switch {
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return errdefs.ErrExhausted
	case errors.Is(err, syscall.ENAMETOOLONG), errors.Is(err, syscall.EMLINK), errors.Is(err, syscall.EILSEQ):
		return errdefs.ErrInvalid
	}
	return nil
}

// quote quotes a name for an error message, eliding the middle of a very
// long one.
func quote(s string) string {
	if len(s) > 200 {
		s = s[:100] + "…" + s[len(s)-100:]
	}
	return strconv.Quote(s)
}

func describeBits(bits int64) string {
	var names []string
	if bits&modeSetuid != 0 {
		names = append(names, "setuid")
	}
	if bits&modeSetgid != 0 {
		names = append(names, "setgid")
	}
	if bits&modeSticky != 0 {
		names = append(names, "sticky")
	}
	if len(names) == 1 {
		return names[0] + " bit is"
	}
	return strings.Join(names, "/") + " bits are"
}

// human formats a byte count: "1 GiB", "1.5 MiB", "300 bytes".
func human(n int64) string {
	units := []string{"bytes", "KiB", "MiB", "GiB", "TiB"}
	f, i := float64(n), 0
	for f >= 1024 && i < len(units)-1 {
		f /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%d bytes", n)
	}
	return strings.TrimSuffix(strconv.FormatFloat(f, 'f', 1, 64), ".0") + " " + units[i]
}
