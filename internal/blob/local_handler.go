package blob

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/kiln-dev/kiln/internal/errdefs"
)

// uploadPath is where Handler is mounted: PUT /blobs/{key}.
const uploadPath = "/blobs/"

// Messages an uploader sees when a URL is refused.
const (
	msgBadSignature = "signature does not match: the upload URL was altered; ask for a new one with GenerateUploadURL"
	msgExpired      = "upload URL expired at %s; ask for a new one"
)

// uploadParams are what an upload URL's signature covers, besides the
// method and the key.
type uploadParams struct {
	expires int64  // unix seconds; the URL works up to and including this second
	size    int64  // exact length; 0: any
	max     int64  // largest length; 0: no limit
	sha256  string // expected hex digest; "": any
}

// sign is the HMAC-SHA256 of one upload's canonical description. Every
// field is a number, lowercase hex or a valid key, none containing a
// newline, so the encoding is unambiguous.
func (l *Local) sign(method, key string, p uploadParams) []byte {
	m := hmac.New(sha256.New, l.secret)
	fmt.Fprintf(m, "kiln-blob-upload-v1\n%s\n%s\n%d\n%d\n%d\n%s", method, key, p.expires, p.size, p.max, p.sha256)
	return m.Sum(nil)
}

// PresignPut returns a URL on kiln's own listener (cfg.BaseURL + /blobs/)
// that accepts one PUT of key within o's limits until it expires: once
// key has an object, the URL is refused (409).
func (l *Local) PresignPut(ctx context.Context, key string, o PutOptions) (Presigned, error) {
	if err := ValidKey(key); err != nil {
		return Presigned{}, err
	}
	o, err := o.normalize()
	if err != nil {
		return Presigned{}, err
	}
	// Round the expiry up to a whole second: the URL never works for less
	// than the TTL.
	expiresAt := l.now().Add(o.TTL).Add(time.Second - 1).Truncate(time.Second)
	p := uploadParams{expires: expiresAt.Unix(), size: o.Size, max: o.MaxSize, sha256: o.SHA256}
	q := url.Values{"expires": {strconv.FormatInt(p.expires, 10)}}
	if p.size > 0 {
		q.Set("size", strconv.FormatInt(p.size, 10))
	}
	if p.max > 0 {
		q.Set("max", strconv.FormatInt(p.max, 10))
	}
	if p.sha256 != "" {
		q.Set("sha256", p.sha256)
	}
	q.Set("sig", hex.EncodeToString(l.sign(http.MethodPut, key, p)))
	base := strings.TrimRight(l.baseURL(), "/")
	if base == "" {
		return Presigned{}, fmt.Errorf("presign upload of blob %q: kiln's own URL is not known yet: %w", key, errdefs.ErrFailedPrecondition)
	}
	return Presigned{
		URL:       base + uploadPath + key + "?" + q.Encode(), // a valid key needs no escaping
		Method:    http.MethodPut,
		Headers:   map[string]string{},
		ExpiresAt: expiresAt,
	}, nil
}

// Handler serves uploads to presigned URLs:
//
//	PUT /blobs/{key}?expires=<unix>&size=<n>&max=<n>&sha256=<hex>&sig=<hex>
//
// Mount it with mux.Handle("/blobs/", l.Handler()). It needs no other
// authentication: the signature is the credential. It answers 200 with the
// body's digest in X-Kiln-SHA256; 403 for an altered or expired URL; 409
// once the key has an object (an upload URL takes one upload); 413 for a
// body over the limit; 400 for a wrong size or digest or a bad key; 405
// for other methods. The body is checked against the limits before it
// is read when its Content-Length allows, and while it streams otherwise;
// nothing is stored unless every check passes.
func (l *Local) Handler() http.Handler { return http.HandlerFunc(l.servePut) }

func (l *Local) servePut(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPut {
		w.Header().Set("Allow", http.MethodPut)
		http.Error(w, "upload URLs take PUT only", http.StatusMethodNotAllowed)
		return
	}
	key, ok := strings.CutPrefix(r.URL.Path, uploadPath)
	if !ok {
		http.NotFound(w, r)
		return
	}
	if err := ValidKey(key); err != nil {
		http.Error(w, "invalid upload URL: "+strings.TrimSuffix(err.Error(), ": "+errdefs.ErrInvalid.Error()), http.StatusBadRequest)
		return
	}
	p, sig, ok := parseUploadQuery(r.URL.Query())
	if !ok || !hmac.Equal(sig, l.sign(http.MethodPut, key, p)) {
		http.Error(w, msgBadSignature, http.StatusForbidden)
		return
	}
	if exp := time.Unix(p.expires, 0); l.now().After(exp) {
		http.Error(w, fmt.Sprintf(msgExpired, exp.UTC().Format(time.RFC3339)), http.StatusForbidden)
		return
	}
	if _, err := l.Stat(r.Context(), key); err == nil {
		// Refused before a byte is read; commit checks again, atomically.
		http.Error(w, msgUploaded, http.StatusConflict)
		return
	}
	if n := r.ContentLength; n >= 0 {
		switch {
		case p.max > 0 && n > p.max:
			http.Error(w, fmt.Sprintf("upload of %d bytes is larger than the limit of %d bytes", n, p.max), http.StatusRequestEntityTooLarge)
			return
		case p.size > 0 && n != p.size:
			http.Error(w, fmt.Sprintf("upload of %d bytes does not match the %d bytes this URL was issued for", n, p.size), http.StatusBadRequest)
			return
		}
	}
	size := int64(-1)
	if p.size > 0 {
		size = p.size
	}
	digest, err := l.write(r.Context(), key, r.Body, putLimits{size: size, max: p.max, sha256: p.sha256, once: true})
	var ue *uploadError
	switch {
	case err == nil:
		w.Header().Set("X-Kiln-SHA256", digest)
		w.WriteHeader(http.StatusOK)
	case errors.As(err, &ue):
		http.Error(w, ue.msg, ue.status)
	case errors.Is(err, errdefs.ErrExhausted):
		http.Error(w, "kiln's upload storage is full; try again later", http.StatusInsufficientStorage)
	case r.Context().Err() != nil:
		// The uploader went away; nobody reads an answer.
	default:
		http.Error(w, "kiln could not store the upload; try again", http.StatusInternalServerError)
	}
}

// parseUploadQuery reads an upload URL's parameters in their canonical
// form; ok is false if any is malformed (the URL was altered).
func parseUploadQuery(q url.Values) (p uploadParams, sig []byte, ok bool) {
	num := func(name string) int64 {
		s := q.Get(name)
		if s == "" {
			return 0
		}
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n < 0 {
			ok = false
		}
		return n
	}
	ok = true
	p.expires = num("expires")
	p.size = num("size")
	p.max = num("max")
	p.sha256 = q.Get("sha256")
	sig, err := hex.DecodeString(q.Get("sig"))
	if err != nil || len(sig) != sha256.Size || p.expires == 0 {
		ok = false
	}
	return p, sig, ok
}
