package blob

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/kiln-dev/kiln/internal/errdefs"
)

// LocalConfig configures a Local store.
type LocalConfig struct {
	// Root is the directory that holds objects/ (one file per key) and
	// tmp/ (uploads in progress, on the same filesystem so they can be
	// renamed into place). Created 0700 if missing.
	Root string
	// Secret is the HMAC key that signs upload URLs, at least 32 bytes
	// (LoadOrCreateSecret keeps one in a file). Changing it invalidates
	// every outstanding URL.
	Secret []byte
	// BaseURL returns where clients reach kiln's HTTP listener, e.g.
	// "http://127.0.0.1:7420"; Local.Handler must be mounted there at
	// /blobs/. It is called on each PresignPut, so it may report an
	// address known only once the listener is up.
	BaseURL func() string
	// Now is the clock for URL expiry; nil means time.Now.
	Now func() time.Time
}

// Local is a Store on the local filesystem. kiln serves its uploads
// itself: mount Handler at /blobs/. Objects are files under Root/objects,
// written 0600 to a temp file and renamed into place, so a reader sees
// either the old object or the whole new one; concurrent writers of one
// key leave the last one renamed.
//
// Unlike S3, a key cannot also be a "directory" of another key: with
// "a/b" stored, putting "a/b/c" fails with ErrFailedPrecondition (and the
// other way round). Keys laid out as <kind>/<owner>/<name> never collide.
type Local struct {
	objects string // Root/objects: the key "a/b" is the file objects/a/b
	tmp     string // Root/tmp: uploads in progress
	secret  []byte
	baseURL func() string
	now     func() time.Time
}

var _ Store = (*Local)(nil)

// staleTempAge is how old a leftover temp file must be for NewLocal to
// remove it: one left by a crash, not an upload in progress.
const staleTempAge = time.Hour

// NewLocal opens (creating if needed) a local store at cfg.Root and removes
// temp files a crash left behind.
func NewLocal(cfg LocalConfig) (*Local, error) {
	if cfg.Root == "" {
		return nil, fmt.Errorf("local blob store: no root directory given: %w", errdefs.ErrInvalid)
	}
	if len(cfg.Secret) < 32 {
		return nil, fmt.Errorf("local blob store: the URL signing secret is %d bytes; it needs at least 32 (see LoadOrCreateSecret): %w", len(cfg.Secret), errdefs.ErrInvalid)
	}
	if cfg.BaseURL == nil {
		return nil, fmt.Errorf("local blob store: no BaseURL: clients need to know where to upload: %w", errdefs.ErrInvalid)
	}
	root, err := filepath.Abs(cfg.Root)
	if err != nil {
		return nil, fmt.Errorf("local blob store: %w", err)
	}
	l := &Local{
		objects: filepath.Join(root, "objects"),
		tmp:     filepath.Join(root, "tmp"),
		secret:  slices.Clone(cfg.Secret),
		baseURL: cfg.BaseURL,
		now:     cfg.Now,
	}
	if l.now == nil {
		l.now = time.Now
	}
	for _, dir := range []string{root, l.objects, l.tmp} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("local blob store: %w", err)
		}
	}
	if err := l.removeStaleTemps(); err != nil {
		return nil, fmt.Errorf("local blob store: %w", err)
	}
	return l, nil
}

func (l *Local) removeStaleTemps() error {
	entries, err := os.ReadDir(l.tmp)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if fi, err := e.Info(); err == nil && time.Since(fi.ModTime()) > staleTempAge {
			os.Remove(filepath.Join(l.tmp, e.Name()))
		}
	}
	return nil
}

// path is where key's object lives. ValidKey has checked key, so the
// result is inside l.objects.
func (l *Local) path(key string) string {
	return filepath.Join(l.objects, filepath.FromSlash(key))
}

// Put writes key from r, which must yield exactly size bytes.
func (l *Local) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	if err := ValidKey(key); err != nil {
		return err
	}
	if err := checkPutSize(size); err != nil {
		return err
	}
	_, err := l.write(ctx, key, r, putLimits{size: size})
	if err != nil {
		return fmt.Errorf("blob %q: %w", key, err)
	}
	return nil
}

// Open reads key.
func (l *Local) Open(ctx context.Context, key string) (io.ReadCloser, Info, error) {
	if err := ValidKey(key); err != nil {
		return nil, Info{}, err
	}
	f, err := os.OpenFile(l.path(key), os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, Info{}, l.fileErr(key, err)
	}
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		f.Close()
		if err == nil {
			err = fs.ErrNotExist // a "directory" of other keys
		}
		return nil, Info{}, l.fileErr(key, err)
	}
	return f, Info{Key: key, Size: fi.Size(), ModTime: fi.ModTime()}, nil
}

// Stat describes key.
func (l *Local) Stat(ctx context.Context, key string) (Info, error) {
	if err := ValidKey(key); err != nil {
		return Info{}, err
	}
	fi, err := os.Lstat(l.path(key))
	if err == nil && !fi.Mode().IsRegular() {
		err = fs.ErrNotExist
	}
	if err != nil {
		return Info{}, l.fileErr(key, err)
	}
	return Info{Key: key, Size: fi.Size(), ModTime: fi.ModTime()}, nil
}

// Delete removes key, and then its parent directories that became empty.
func (l *Local) Delete(ctx context.Context, key string) error {
	if err := ValidKey(key); err != nil {
		return err
	}
	p := l.path(key)
	fi, err := os.Lstat(p)
	if err == nil && fi.Mode().IsRegular() {
		err = os.Remove(p)
	} else if err == nil {
		return nil // a "directory" of other keys, not an object
	}
	if err != nil {
		if err = l.fileErr(key, err); errdefs.IsNotFound(err) {
			return nil
		}
		return err
	}
	// Best effort: os.Remove fails on a directory that is not empty. A
	// concurrent write into a directory removed here retries (commit).
	for dir := filepath.Dir(p); dir != l.objects && strings.HasPrefix(dir, l.objects); dir = filepath.Dir(dir) {
		if os.Remove(dir) != nil {
			break
		}
	}
	return nil
}

// List returns the objects whose keys start with prefix, sorted by key.
func (l *Local) List(ctx context.Context, prefix string) ([]Info, error) {
	if err := validPrefix(prefix); err != nil {
		return nil, err
	}
	// Walk only the deepest directory the prefix names.
	root := l.objects
	if i := strings.LastIndexByte(prefix, '/'); i >= 0 {
		root = l.path(prefix[:i])
	}
	var out []Info
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if gone(err) { // never created, or removed by a concurrent Delete
				return nil
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, err := filepath.Rel(l.objects, p)
		if err != nil {
			return err
		}
		key := filepath.ToSlash(rel)
		if d.IsDir() {
			if p != root && !strings.HasPrefix(key+"/", prefix) && !strings.HasPrefix(prefix, key+"/") {
				return fs.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() || !strings.HasPrefix(key, prefix) {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			if gone(err) {
				return nil
			}
			return err
		}
		out = append(out, Info{Key: key, Size: fi.Size(), ModTime: fi.ModTime()})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list blobs %q: %w", prefix, err)
	}
	slices.SortFunc(out, func(a, b Info) int { return strings.Compare(a.Key, b.Key) })
	return out, nil
}

// gone reports a path that does not exist, also when one of its parents is
// a file.
func gone(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR)
}

func (l *Local) fileErr(key string, err error) error {
	if gone(err) {
		return fmt.Errorf("blob %q: %w", key, errdefs.ErrNotFound)
	}
	return fmt.Errorf("blob %q: %w", key, err)
}

// putLimits are what one write enforces.
type putLimits struct {
	size   int64  // exact length; < 0: any
	max    int64  // largest length; 0: no limit
	sha256 string // expected hex digest; "": any
	// once refuses to replace an existing object (presigned uploads).
	once bool
}

// msgUploaded refuses a second upload to an upload URL.
const msgUploaded = "this upload URL was already used: it takes one upload; ask for a new one with GenerateUploadURL"

// uploadError is a failure caused by the body or the limits it broke, not
// by storage; its message is safe to show the uploader.
type uploadError struct {
	status int   // for Handler
	kind   error // an errdefs kind
	msg    string
}

func (e *uploadError) Error() string { return e.msg }
func (e *uploadError) Unwrap() error { return e.kind }

// write streams r to a temp file, checks it against lim, fsyncs it and
// renames it to key's path. On any failure it removes the temp file and
// leaves the object as it was. It returns the body's hex SHA-256.
func (l *Local) write(ctx context.Context, key string, r io.Reader, lim putLimits) (digest string, err error) {
	f, err := os.CreateTemp(l.tmp, "put-*") // mode 0600
	if err != nil {
		return "", storageErr(err)
	}
	committed := false
	defer func() {
		if !committed {
			f.Close()
			os.Remove(f.Name())
		}
	}()

	// Read at most one byte past a limit: enough to know it was broken.
	src := io.Reader(ctxReader{ctx, r})
	limit := int64(-1)
	if lim.max > 0 {
		limit = lim.max + 1
	}
	if lim.size >= 0 && (limit < 0 || lim.size+1 < limit) {
		limit = lim.size + 1
	}
	if limit >= 0 {
		src = io.LimitReader(src, limit)
	}
	h := sha256.New()
	n, err := copyBody(f, h, src)
	if err != nil {
		return "", err
	}
	switch {
	case lim.max > 0 && n > lim.max:
		return "", &uploadError{413, errdefs.ErrExhausted, fmt.Sprintf("upload is larger than the limit of %d bytes", lim.max)}
	case lim.size >= 0 && n > lim.size:
		return "", &uploadError{400, errdefs.ErrInvalid, fmt.Sprintf("upload has more than the %d bytes it was declared to have", lim.size)}
	case lim.size >= 0 && n < lim.size:
		return "", &uploadError{400, errdefs.ErrInvalid, fmt.Sprintf("upload has %d bytes but was declared to have %d", n, lim.size)}
	}
	digest = hex.EncodeToString(h.Sum(nil))
	if lim.sha256 != "" && digest != lim.sha256 {
		return "", &uploadError{400, errdefs.ErrInvalid, fmt.Sprintf("upload has digest sha256:%s but sha256:%s was expected; nothing was stored", digest, lim.sha256)}
	}
	if err := f.Sync(); err != nil {
		return "", storageErr(err)
	}
	if err := f.Close(); err != nil {
		return "", storageErr(err)
	}
	if err := l.commit(f.Name(), key, lim.once); err != nil {
		return "", err
	}
	committed = true
	return digest, nil
}

// copyBody copies src to f and h, telling a failed read of the body (the
// uploader's problem) from a failed write (storage's).
func copyBody(f *os.File, h hash.Hash, src io.Reader) (int64, error) {
	buf := make([]byte, 64<<10)
	var n int64
	for {
		m, rerr := src.Read(buf)
		if m > 0 {
			if _, err := f.Write(buf[:m]); err != nil {
				return n, storageErr(err)
			}
			h.Write(buf[:m])
			n += int64(m)
		}
		switch {
		case rerr == io.EOF:
			return n, nil
		case errors.Is(rerr, context.Canceled) || errors.Is(rerr, context.DeadlineExceeded):
			return n, rerr
		case rerr != nil:
			return n, &uploadError{400, errdefs.ErrInvalid, "reading the upload: " + rerr.Error()}
		}
	}
}

// commit renames the finished temp file to key's path; with once, it
// links it there instead, which fails if the key has an object (of two
// racing uploads, one wins). A concurrent Delete may remove the parent
// directory between MkdirAll and Rename; then it tries again.
func (l *Local) commit(tmp, key string, once bool) error {
	dst := l.path(key)
	var err error
	for range 5 {
		if err = os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
			break
		}
		if once {
			if err = os.Link(tmp, dst); err == nil {
				os.Remove(tmp)
			} else if fi, serr := os.Lstat(dst); errors.Is(err, fs.ErrExist) && serr == nil && fi.Mode().IsRegular() {
				return &uploadError{409, errdefs.ErrAlreadyExists, msgUploaded}
			}
		} else {
			err = os.Rename(tmp, dst)
		}
		if err == nil {
			syncDir(filepath.Dir(dst))
			return nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			break
		}
	}
	if errors.Is(err, syscall.ENOTDIR) || errors.Is(err, syscall.EISDIR) || errors.Is(err, fs.ErrExist) || errors.Is(err, syscall.ENOTEMPTY) {
		return &uploadError{409, errdefs.ErrFailedPrecondition, fmt.Sprintf("blob key %q collides with another key stored as its parent or child (like \"a/b\" and \"a/b/c\")", key)}
	}
	return storageErr(err)
}

// syncDir makes a rename durable. Best effort: the data itself is synced.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}

// storageErr marks a failure of the local disk; a full disk is ErrExhausted.
func storageErr(err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return fmt.Errorf("blob storage is full: %w: %w", errdefs.ErrExhausted, err)
	}
	return fmt.Errorf("blob storage: %w", err)
}

// LoadOrCreateSecret reads the URL signing secret kept in the file at path,
// creating it (32 random bytes, mode 0600, its directory 0700) the first
// time. A file others can read, or shorter than 32 bytes, is refused.
func LoadOrCreateSecret(path string) ([]byte, error) {
	secret, err := readSecret(path)
	if !errors.Is(err, fs.ErrNotExist) {
		return secret, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create upload URL secret: %w", err)
	}
	secret = make([]byte, 32)
	rand.Read(secret)
	// Write it whole under a temp name and link it into place: a process
	// racing to create it reads all of it or nothing.
	f, err := os.CreateTemp(filepath.Dir(path), ".secret-*")
	if err != nil {
		return nil, fmt.Errorf("create upload URL secret: %w", err)
	}
	defer os.Remove(f.Name())
	_, err = f.Write(secret)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Link(f.Name(), path)
	}
	switch {
	case errors.Is(err, fs.ErrExist):
		return readSecret(path)
	case err != nil:
		return nil, fmt.Errorf("create upload URL secret: %w", err)
	}
	return secret, nil
}

func readSecret(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("upload URL secret %s is accessible to other users (mode %04o): chmod 600 it: %w", path, fi.Mode().Perm(), errdefs.ErrPermission)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(b) < 32 {
		return nil, fmt.Errorf("upload URL secret %s has %d bytes; it needs at least 32: delete it to have a new one made (outstanding upload URLs stop working): %w", path, len(b), errdefs.ErrInvalid)
	}
	return b, nil
}
