package blob

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/kiln-dev/kiln/internal/errdefs"
)

// Store holds objects by key. Implementations are safe for concurrent use.
type Store interface {
	// PresignPut returns a request that lets its holder upload key once,
	// with no other credentials, until it expires: an upload when key has
	// an object is refused (a 4xx), so the first upload stays what is
	// stored. Key should be new. (S3 enforces this with a conditional
	// write, an If-None-Match: * header the client sends as one of
	// Presigned.Headers; a server that ignores the header lets a second
	// upload replace the first.)
	PresignPut(ctx context.Context, key string, o PutOptions) (Presigned, error)
	// Put writes key from r, which must yield exactly size bytes; nothing
	// is stored if it does not (ErrInvalid). A reader that sees the object
	// sees all of it.
	Put(ctx context.Context, key string, r io.Reader, size int64) error
	// Open reads key; the caller closes the reader. A missing key is an
	// error wrapping errdefs.ErrNotFound.
	Open(ctx context.Context, key string) (io.ReadCloser, Info, error)
	// Stat describes key; a missing key wraps errdefs.ErrNotFound.
	Stat(ctx context.Context, key string) (Info, error)
	// Delete removes key. Deleting a missing key is not an error.
	Delete(ctx context.Context, key string) error
	// List returns the objects whose keys start with prefix, sorted by key.
	// The prefix is a plain string prefix, as in S3: "contexts/p1" also
	// matches "contexts/p10/x"; end it with "/" to list one "directory".
	List(ctx context.Context, prefix string) ([]Info, error)
}

// Info describes one stored object.
type Info struct {
	Key     string
	Size    int64
	ModTime time.Time
}

// PutOptions restrict what a presigned URL accepts.
type PutOptions struct {
	// TTL is how long the URL works: 0 means DefaultTTL; at most MaxTTL.
	TTL time.Duration
	// Size, if > 0, is the exact length the upload must have. S3 signs it
	// as the Content-Length, so a client must send exactly that many bytes
	// (curl -T does).
	Size int64
	// MaxSize, if > 0, is the largest upload the local store accepts; it
	// refuses a larger body with 413, before reading it when the
	// Content-Length says so, else as soon as the stream passes the limit.
	// S3 cannot enforce a limit through a plain presigned PUT: set Size
	// there (or check Stat afterwards).
	MaxSize int64
	// SHA256, if set, is the hex SHA-256 the upload must have. The local
	// store verifies it and keeps nothing on a mismatch. S3 does not (that
	// would need a checksum header in the client's own encoding); whoever
	// reads the object verifies the digest anyway.
	SHA256 string
}

// Presigned is a request a client makes, with no other credentials, to
// upload one object.
type Presigned struct {
	URL    string
	Method string // "PUT"
	// Headers are those the client must send as they are, besides Host and
	// Content-Length (which HTTP clients set themselves). Usually empty.
	Headers   map[string]string
	ExpiresAt time.Time
}

const (
	// DefaultTTL is how long a presigned URL works when PutOptions.TTL is 0.
	DefaultTTL = 15 * time.Minute
	// MaxTTL is the longest a presigned URL may work: S3's SigV4 limit.
	MaxTTL = 7 * 24 * time.Hour
	// MaxKeyLen is the longest key ValidKey accepts.
	MaxKeyLen = 512
	// maxSegmentLen is the longest path segment: a file name on Linux.
	maxSegmentLen = 255
)

// ValidKey reports whether key can name an object: 1 to 512 characters of
// [A-Za-z0-9._/-], made of non-empty "/"-separated segments of at most 255
// characters, none of them "." and no ".." anywhere, and no leading "/".
// Such a key is the same string in a URL path, an S3 key and a relative
// file path, so no backend has to escape or clean it. An invalid key is an
// error wrapping errdefs.ErrInvalid.
func ValidKey(key string) error {
	if key == "" {
		return fmt.Errorf("blob key is empty: %w", errdefs.ErrInvalid)
	}
	if len(key) > MaxKeyLen {
		return fmt.Errorf("blob key is %d characters; the limit is %d: %w", len(key), MaxKeyLen, errdefs.ErrInvalid)
	}
	for i := 0; i < len(key); i++ {
		if !keyChar(key[i]) {
			return fmt.Errorf("blob key %q: character %q is not allowed (use A-Z a-z 0-9 . _ / -): %w", key, key[i], errdefs.ErrInvalid)
		}
	}
	if strings.Contains(key, "..") {
		return fmt.Errorf("blob key %q must not contain \"..\": %w", key, errdefs.ErrInvalid)
	}
	for seg := range strings.SplitSeq(key, "/") {
		switch {
		case seg == "":
			return fmt.Errorf("blob key %q has an empty segment (a leading, trailing or double \"/\"): %w", key, errdefs.ErrInvalid)
		case seg == ".":
			return fmt.Errorf("blob key %q has a \".\" segment: %w", key, errdefs.ErrInvalid)
		case len(seg) > maxSegmentLen:
			return fmt.Errorf("blob key %q has a segment longer than %d characters: %w", key, maxSegmentLen, errdefs.ErrInvalid)
		}
	}
	return nil
}

func keyChar(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '.' || c == '_' || c == '-' || c == '/'
}

// validPrefix checks a List prefix: empty, or a valid key optionally
// followed by one "/".
func validPrefix(prefix string) error {
	if prefix == "" {
		return nil
	}
	if err := ValidKey(strings.TrimSuffix(prefix, "/")); err != nil {
		return fmt.Errorf("list prefix: %w", err)
	}
	return nil
}

// normalize checks o and fills in defaults: the TTL, and SHA256 in lower
// case.
func (o PutOptions) normalize() (PutOptions, error) {
	switch {
	case o.TTL == 0:
		o.TTL = DefaultTTL
	case o.TTL < 0:
		return o, fmt.Errorf("upload URL lifetime %v is negative: %w", o.TTL, errdefs.ErrInvalid)
	case o.TTL > MaxTTL:
		return o, fmt.Errorf("upload URL lifetime %v is longer than the limit of %v: %w", o.TTL, MaxTTL, errdefs.ErrInvalid)
	}
	if o.Size < 0 || o.MaxSize < 0 {
		return o, fmt.Errorf("upload size limits must not be negative (size %d, max %d): %w", o.Size, o.MaxSize, errdefs.ErrInvalid)
	}
	if o.Size > 0 && o.MaxSize > 0 && o.Size > o.MaxSize {
		return o, fmt.Errorf("upload of %d bytes is larger than the limit of %d bytes: %w", o.Size, o.MaxSize, errdefs.ErrExhausted)
	}
	if o.SHA256 != "" {
		o.SHA256 = strings.ToLower(o.SHA256)
		if b, err := hex.DecodeString(o.SHA256); err != nil || len(b) != 32 {
			return o, fmt.Errorf("upload digest %q is not a hex SHA-256 (64 hex digits): %w", o.SHA256, errdefs.ErrInvalid)
		}
	}
	return o, nil
}

func checkPutSize(size int64) error {
	if size < 0 {
		return fmt.Errorf("blob size %d is negative; Put needs the exact length: %w", size, errdefs.ErrInvalid)
	}
	return nil
}

// ctxReader fails reads once ctx is done, so a long copy stops on cancel.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
