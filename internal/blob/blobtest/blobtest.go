// Package blobtest is the conformance suite every blob.Store passes: Run
// it against a backend (local disk, S3 through versitygw) and it checks
// presigned uploads made the way a platform makes them (a plain HTTP PUT,
// as `curl -T` sends it), what they refuse (altered, expired, other-key and
// wrong-size uploads), and reads, listings and deletes, including that
// prefixes isolate.
package blobtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/blob"
	"github.com/kiln-dev/kiln/internal/errdefs"
)

// Run runs the suite. newStore returns an empty store for one subtest; it
// may share a server between subtests as long as their stores don't see
// each other's objects (for example, with a distinct key prefix each).
func Run(t *testing.T, newStore func(t *testing.T) blob.Store) {
	cases := []struct {
		name string
		fn   func(t *testing.T, s blob.Store)
	}{
		{"PresignedUpload", testPresignedUpload},
		{"PresignedUploadExactSize", testPresignedExactSize},
		{"PresignedUploadSizeMismatch", testPresignedSizeMismatch},
		{"PresignedUploadOnce", testPresignedOnce},
		{"PresignedUploadExpired", testPresignedExpired},
		{"PresignedUploadTampered", testPresignedTampered},
		{"PresignedUploadOtherKey", testPresignedOtherKey},
		{"PresignOptions", testPresignOptions},
		{"PutOpenStat", testPutOpenStat},
		{"PutWrongSize", testPutWrongSize},
		{"OpenMissing", testOpenMissing},
		{"List", testList},
		{"Delete", testDelete},
		{"InvalidKeys", testInvalidKeys},
		{"Concurrent", testConcurrent},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { c.fn(t, newStore(t)) })
	}
}

// Upload sends body to a presigned request the way `curl -T file URL`
// does: the method, Content-Length, and only the headers p lists. It
// returns the status and the response body.
func Upload(t *testing.T, p blob.Presigned, rawURL string, body []byte) (int, string) {
	t.Helper()
	if rawURL == "" {
		rawURL = p.URL
	}
	req, err := http.NewRequest(p.Method, rawURL, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range p.Headers {
		req.Header.Set(k, v)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", p.Method, rawURL, err)
	}
	defer res.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(res.Body, 4096))
	return res.StatusCode, string(msg)
}

func random(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func digest(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

func presign(t *testing.T, s blob.Store, key string, o blob.PutOptions) blob.Presigned {
	t.Helper()
	p, err := s.PresignPut(context.Background(), key, o)
	if err != nil {
		t.Fatalf("PresignPut(%q, %+v): %v", key, o, err)
	}
	if p.Method != http.MethodPut {
		t.Fatalf("PresignPut method = %q, want PUT", p.Method)
	}
	return p
}

func put(t *testing.T, s blob.Store, key string, data []byte) {
	t.Helper()
	if err := s.Put(context.Background(), key, bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatalf("Put(%q): %v", key, err)
	}
}

// mustRead checks that key holds exactly want, through Open and Stat.
func mustRead(t *testing.T, s blob.Store, key string, want []byte) {
	t.Helper()
	ctx := context.Background()
	rc, info, err := s.Open(ctx, key)
	if err != nil {
		t.Fatalf("Open(%q): %v", key, err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		t.Fatalf("read %q: %v", key, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("Open(%q) read %d bytes (sha256 %s), want %d bytes (sha256 %s)", key, len(got), digest(got)[:12], len(want), digest(want)[:12])
	}
	if info.Key != key || info.Size != int64(len(want)) {
		t.Fatalf("Open(%q) info = %+v, want key %q size %d", key, info, key, len(want))
	}
	st, err := s.Stat(ctx, key)
	if err != nil {
		t.Fatalf("Stat(%q): %v", key, err)
	}
	if st.Key != key || st.Size != int64(len(want)) {
		t.Fatalf("Stat(%q) = %+v, want key %q size %d", key, st, key, len(want))
	}
	// Not a timing assertion: a zero or wildly wrong time is a bug.
	if d := time.Since(st.ModTime); st.ModTime.IsZero() || d > time.Hour || d < -time.Hour {
		t.Fatalf("Stat(%q).ModTime = %v, want about now", key, st.ModTime)
	}
}

// mustBeMissing checks that key holds nothing.
func mustBeMissing(t *testing.T, s blob.Store, key string) {
	t.Helper()
	if info, err := s.Stat(context.Background(), key); !errdefs.IsNotFound(err) {
		t.Fatalf("Stat(%q) = %+v, %v; want ErrNotFound", key, info, err)
	}
}

func wantRefused(t *testing.T, what string, status int, msg string) {
	t.Helper()
	if status < 400 || status > 499 {
		t.Fatalf("%s: status %d (%s); want it refused with a 4xx", what, status, strings.TrimSpace(msg))
	}
}

func testPresignedUpload(t *testing.T, s blob.Store) {
	data := random(t, 300<<10)
	key := "contexts/p1/build-1.tar.gz"
	before := time.Now()
	p := presign(t, s, key, blob.PutOptions{TTL: 10 * time.Minute})
	if !p.ExpiresAt.After(before.Add(9*time.Minute)) || p.ExpiresAt.After(before.Add(11*time.Minute)) {
		t.Errorf("ExpiresAt = %v, want about 10 minutes from %v", p.ExpiresAt, before)
	}
	if _, err := url.Parse(p.URL); err != nil || !strings.HasPrefix(p.URL, "http") {
		t.Fatalf("URL %q is not absolute: %v", p.URL, err)
	}
	if status, msg := Upload(t, p, "", data); status != http.StatusOK {
		t.Fatalf("upload: status %d: %s", status, msg)
	}
	mustRead(t, s, key, data)

	// TTL 0 means the default.
	p = presign(t, s, "contexts/p1/default-ttl", blob.PutOptions{})
	if d := time.Until(p.ExpiresAt); d < blob.DefaultTTL-time.Minute || d > blob.DefaultTTL+time.Minute {
		t.Errorf("default TTL: ExpiresAt in %v, want about %v", d, blob.DefaultTTL)
	}

	// An empty upload is an object too.
	p = presign(t, s, "contexts/p1/empty", blob.PutOptions{})
	if status, msg := Upload(t, p, "", nil); status != http.StatusOK {
		t.Fatalf("empty upload: status %d: %s", status, msg)
	}
	mustRead(t, s, "contexts/p1/empty", []byte{})
}

func testPresignedExactSize(t *testing.T, s blob.Store) {
	data := random(t, 4096)
	p := presign(t, s, "sized", blob.PutOptions{Size: int64(len(data)), SHA256: digest(data)})
	if status, msg := Upload(t, p, "", data); status != http.StatusOK {
		t.Fatalf("upload of the declared size and digest: status %d: %s", status, msg)
	}
	mustRead(t, s, "sized", data)
}

func testPresignedSizeMismatch(t *testing.T, s blob.Store) {
	data := random(t, 4096)
	p := presign(t, s, "sized", blob.PutOptions{Size: int64(len(data))})
	status, msg := Upload(t, p, "", append(data, 'x'))
	wantRefused(t, "one byte more than declared", status, msg)
	status, msg = Upload(t, p, "", data[:len(data)-1])
	wantRefused(t, "one byte less than declared", status, msg)
	mustBeMissing(t, s, "sized")
}

// testPresignedOnce: a URL takes one upload; a second, sequential or
// racing, is refused and the first stays what is stored.
func testPresignedOnce(t *testing.T, s blob.Store) {
	p := presign(t, s, "ctx", blob.PutOptions{})
	first, second := random(t, 1000), random(t, 700)
	if status, msg := Upload(t, p, "", first); status != http.StatusOK {
		t.Fatalf("upload: status %d: %s", status, msg)
	}
	status, msg := Upload(t, p, "", second)
	wantRefused(t, "a second upload to the same URL", status, msg)
	mustRead(t, s, "ctx", first)
	// Another URL for the same key is refused as well.
	status, msg = Upload(t, presign(t, s, "ctx", blob.PutOptions{}), "", second)
	wantRefused(t, "an upload over an existing object", status, msg)
	mustRead(t, s, "ctx", first)

	p = presign(t, s, "race", blob.PutOptions{})
	var wg sync.WaitGroup
	codes := make([]int, 4)
	bodies := make([][]byte, len(codes))
	for i := range codes {
		bodies[i] = random(t, 64<<10)
		wg.Add(1)
		go func() {
			defer wg.Done()
			codes[i], _ = Upload(t, p, "", bodies[i])
		}()
	}
	wg.Wait()
	won := -1
	for i, c := range codes {
		switch {
		case c == http.StatusOK && won >= 0:
			t.Errorf("racing uploads: both %d and %d succeeded (%v)", won, i, codes)
		case c == http.StatusOK:
			won = i
		case c < 400 || c > 499:
			t.Errorf("racing upload %d: status %d", i, c)
		}
	}
	if won < 0 {
		t.Fatalf("no racing upload succeeded: %v", codes)
	}
	mustRead(t, s, "race", bodies[won])
}

func testPresignedExpired(t *testing.T, s blob.Store) {
	p := presign(t, s, "late", blob.PutOptions{TTL: time.Second})
	// The URL's clock has whole seconds: 2.5 s is past any rounding.
	time.Sleep(2500 * time.Millisecond)
	status, msg := Upload(t, p, "", []byte("too late"))
	wantRefused(t, "expired URL", status, msg)
	mustBeMissing(t, s, "late")
}

// testPresignedTampered alters each query parameter of a URL in turn (the
// signature, the expiry, the size limit, the credential...) and checks the
// upload is refused, then that the unaltered URL still works.
func testPresignedTampered(t *testing.T, s blob.Store) {
	data := []byte("hello")
	p := presign(t, s, "contexts/p1/tamper", blob.PutOptions{Size: int64(len(data))})
	u, err := url.Parse(p.URL)
	if err != nil {
		t.Fatal(err)
	}
	params := strings.Split(u.RawQuery, "&")
	sawSignature := false
	for i, param := range params {
		name, value, _ := strings.Cut(param, "=")
		if n := strings.ToLower(name); n == "sig" || n == "x-amz-signature" {
			sawSignature = true
		}
		altered := slicesClone(params)
		altered[i] = name + "=" + flipLast(value)
		v := *u
		v.RawQuery = strings.Join(altered, "&")
		status, msg := Upload(t, p, v.String(), data)
		wantRefused(t, fmt.Sprintf("URL with %s altered", name), status, msg)
	}
	if !sawSignature {
		t.Errorf("no signature parameter (sig or X-Amz-Signature) in %s", p.URL)
	}
	mustBeMissing(t, s, "contexts/p1/tamper")
	if status, msg := Upload(t, p, "", data); status != http.StatusOK {
		t.Fatalf("the unaltered URL: status %d: %s", status, msg)
	}
	mustRead(t, s, "contexts/p1/tamper", data)
}

// flipLast changes the last character of a query value (or gives an empty
// one a value), keeping it URL-safe.
func flipLast(v string) string {
	if v == "" {
		return "0"
	}
	c := v[len(v)-1]
	switch {
	case c >= '0' && c < '9', c >= 'a' && c < 'z', c >= 'A' && c < 'Z':
		c++
	case c == '9':
		c = '0'
	case c == 'z':
		c = 'a'
	case c == 'Z':
		c = 'A'
	default:
		return v + "0"
	}
	return v[:len(v)-1] + string(c)
}

func slicesClone(s []string) []string { return append([]string(nil), s...) }

// testPresignedOtherKey checks that a URL for one key cannot write another:
// neither a sibling, nor a key of another prefix, nor a parent.
func testPresignedOtherKey(t *testing.T, s blob.Store) {
	key := "contexts/p1/a.tar.gz"
	p := presign(t, s, key, blob.PutOptions{})
	u, err := url.Parse(p.URL)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(u.Path, "/"+key) {
		t.Fatalf("URL path %q does not end with the key %q", u.Path, key)
	}
	for _, other := range []string{"contexts/p1/b.tar.gz", "contexts/p2/a.tar.gz", "contexts/p1/a.tar.gz2", "contexts/p1"} {
		v := *u
		v.Path = strings.TrimSuffix(u.Path, key) + other
		v.RawPath = ""
		status, msg := Upload(t, p, v.String(), []byte("intruder"))
		wantRefused(t, fmt.Sprintf("URL for %q used for %q", key, other), status, msg)
		mustBeMissing(t, s, other)
	}
	mustBeMissing(t, s, key)
}

func testPresignOptions(t *testing.T, s blob.Store) {
	ctx := context.Background()
	for _, o := range []blob.PutOptions{
		{TTL: -time.Second},
		{TTL: blob.MaxTTL + time.Second},
		{Size: -1},
		{MaxSize: -1},
		{SHA256: "abc"},
		{SHA256: strings.Repeat("g", 64)},
	} {
		if _, err := s.PresignPut(ctx, "k", o); !errdefs.IsInvalid(err) {
			t.Errorf("PresignPut(%+v) = %v, want ErrInvalid", o, err)
		}
	}
	if _, err := s.PresignPut(ctx, "k", blob.PutOptions{Size: 10, MaxSize: 5}); err == nil {
		t.Errorf("PresignPut with Size over MaxSize succeeded")
	}
	if _, err := s.PresignPut(ctx, "k", blob.PutOptions{TTL: blob.MaxTTL, SHA256: strings.ToUpper(digest(nil))}); err != nil {
		t.Errorf("PresignPut with the longest TTL and an upper-case digest: %v", err)
	}
}

func testPutOpenStat(t *testing.T, s blob.Store) {
	data := random(t, 1<<20+17)
	put(t, s, "a/b/c.bin", data)
	mustRead(t, s, "a/b/c.bin", data)
	put(t, s, "a/b/c.bin", []byte("replaced"))
	mustRead(t, s, "a/b/c.bin", []byte("replaced"))
	put(t, s, "empty", nil)
	mustRead(t, s, "empty", []byte{})
}

func testPutWrongSize(t *testing.T, s blob.Store) {
	ctx := context.Background()
	data := []byte("0123456789")
	if err := s.Put(ctx, "short", bytes.NewReader(data), 11); !errdefs.IsInvalid(err) {
		t.Errorf("Put of 10 bytes declared as 11 = %v, want ErrInvalid", err)
	}
	mustBeMissing(t, s, "short")
	if err := s.Put(ctx, "long", bytes.NewReader(data), 9); !errdefs.IsInvalid(err) {
		t.Errorf("Put of 10 bytes declared as 9 = %v, want ErrInvalid", err)
	}
	mustBeMissing(t, s, "long")
	if err := s.Put(ctx, "unknown", bytes.NewReader(data), -1); !errdefs.IsInvalid(err) {
		t.Errorf("Put with size -1 = %v, want ErrInvalid", err)
	}
}

func testOpenMissing(t *testing.T, s blob.Store) {
	ctx := context.Background()
	if rc, _, err := s.Open(ctx, "nope/missing"); !errdefs.IsNotFound(err) {
		if rc != nil {
			rc.Close()
		}
		t.Errorf("Open(missing) = %v, want ErrNotFound", err)
	}
	mustBeMissing(t, s, "nope/missing")
	// A "directory" of other keys is not an object.
	put(t, s, "dir/child", []byte("x"))
	mustBeMissing(t, s, "dir")
	if rc, _, err := s.Open(ctx, "dir"); !errdefs.IsNotFound(err) {
		if rc != nil {
			rc.Close()
		}
		t.Errorf("Open(%q) = %v, want ErrNotFound", "dir", err)
	}
}

func testList(t *testing.T, s blob.Store) {
	ctx := context.Background()
	keys := []string{
		"contexts/p1/x", "contexts/p1/y/z", "contexts/p1-a", "contexts/p10/x",
		"contexts/p2/x", "other/p1/x", "contexts/p1/a.b",
	}
	for i, k := range keys {
		put(t, s, k, bytes.Repeat([]byte{'k'}, i+1))
	}
	for _, c := range []struct {
		prefix string
		want   []string
	}{
		{"contexts/p1/", []string{"contexts/p1/a.b", "contexts/p1/x", "contexts/p1/y/z"}},
		{"contexts/p1", []string{"contexts/p1-a", "contexts/p1/a.b", "contexts/p1/x", "contexts/p1/y/z", "contexts/p10/x"}},
		{"contexts/p2/", []string{"contexts/p2/x"}},
		{"contexts/p3/", nil},
		{"nothing/here/", nil},
		{"", []string{"contexts/p1-a", "contexts/p1/a.b", "contexts/p1/x", "contexts/p1/y/z", "contexts/p10/x", "contexts/p2/x", "other/p1/x"}},
	} {
		got, err := s.List(ctx, c.prefix)
		if err != nil {
			t.Fatalf("List(%q): %v", c.prefix, err)
		}
		var gotKeys []string
		for _, info := range got {
			gotKeys = append(gotKeys, info.Key)
			if want := int64(indexOf(keys, info.Key) + 1); info.Size != want {
				t.Errorf("List(%q): %s has size %d, want %d", c.prefix, info.Key, info.Size, want)
			}
			if info.ModTime.IsZero() {
				t.Errorf("List(%q): %s has no ModTime", c.prefix, info.Key)
			}
		}
		if strings.Join(gotKeys, ",") != strings.Join(c.want, ",") {
			t.Errorf("List(%q) = %q, want %q", c.prefix, gotKeys, c.want)
		}
	}
	for _, bad := range []string{"/abs", "a//", "../x", "a/../b/"} {
		if _, err := s.List(ctx, bad); !errdefs.IsInvalid(err) {
			t.Errorf("List(%q) = %v, want ErrInvalid", bad, err)
		}
	}
}

func indexOf(s []string, v string) int {
	for i, x := range s {
		if x == v {
			return i
		}
	}
	return -1
}

func testDelete(t *testing.T, s blob.Store) {
	ctx := context.Background()
	put(t, s, "d/1", []byte("one"))
	put(t, s, "d/2", []byte("two"))
	for range 2 { // idempotent
		if err := s.Delete(ctx, "d/1"); err != nil {
			t.Fatalf("Delete(d/1): %v", err)
		}
	}
	mustBeMissing(t, s, "d/1")
	mustRead(t, s, "d/2", []byte("two"))
	if err := s.Delete(ctx, "never/was"); err != nil {
		t.Fatalf("Delete(missing): %v", err)
	}
	// A key can be written again after its directory emptied.
	if err := s.Delete(ctx, "d/2"); err != nil {
		t.Fatal(err)
	}
	if got, err := s.List(ctx, "d/"); err != nil || len(got) != 0 {
		t.Fatalf("List(d/) after deleting all = %v, %v", got, err)
	}
	put(t, s, "d/1", []byte("again"))
	mustRead(t, s, "d/1", []byte("again"))
}

var invalidKeys = []string{
	"", "/abs", "a/", "a//b", "..", "a/../b", "a/..", "./a", "a/./b", "a b", "a\nb",
	"a?b", "a%2Fb", "a\\b", "ü", strings.Repeat("a", blob.MaxKeyLen+1),
}

func testInvalidKeys(t *testing.T, s blob.Store) {
	ctx := context.Background()
	for _, k := range invalidKeys {
		if _, err := s.PresignPut(ctx, k, blob.PutOptions{}); !errdefs.IsInvalid(err) {
			t.Errorf("PresignPut(%q) = %v, want ErrInvalid", k, err)
		}
		if err := s.Put(ctx, k, strings.NewReader("x"), 1); !errdefs.IsInvalid(err) {
			t.Errorf("Put(%q) = %v, want ErrInvalid", k, err)
		}
		if _, _, err := s.Open(ctx, k); !errdefs.IsInvalid(err) {
			t.Errorf("Open(%q) = %v, want ErrInvalid", k, err)
		}
		if _, err := s.Stat(ctx, k); !errdefs.IsInvalid(err) {
			t.Errorf("Stat(%q) = %v, want ErrInvalid", k, err)
		}
		if err := s.Delete(ctx, k); !errdefs.IsInvalid(err) {
			t.Errorf("Delete(%q) = %v, want ErrInvalid", k, err)
		}
	}
	// The longest valid key works.
	long := strings.Repeat("a/", blob.MaxKeyLen/2-1) + "zz"
	put(t, s, long, []byte("x"))
	mustRead(t, s, long, []byte("x"))
}

// testConcurrent writes and reads different keys at once, both ways in.
func testConcurrent(t *testing.T, s blob.Store) {
	const n = 8
	var wg sync.WaitGroup
	errs := make(chan error, 2*n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- roundTrip(s, fmt.Sprintf("conc/put-%d", i), i)
		}()
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- presignedRoundTrip(s, fmt.Sprintf("conc/url-%d", i), i)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	got, err := s.List(context.Background(), "conc/")
	if err != nil || len(got) != 2*n {
		t.Fatalf("List(conc/) = %d objects, %v; want %d", len(got), err, 2*n)
	}
}

func content(i int) []byte { return bytes.Repeat([]byte(fmt.Sprintf("object %d;", i)), 1000+i*100) }

func roundTrip(s blob.Store, key string, i int) error {
	ctx := context.Background()
	data := content(i)
	if err := s.Put(ctx, key, bytes.NewReader(data), int64(len(data))); err != nil {
		return err
	}
	return readBack(s, key, data)
}

func presignedRoundTrip(s blob.Store, key string, i int) error {
	data := content(i)
	p, err := s.PresignPut(context.Background(), key, blob.PutOptions{Size: int64(len(data))})
	if err != nil {
		return err
	}
	req, err := http.NewRequest(p.Method, p.URL, bytes.NewReader(data))
	if err != nil {
		return err
	}
	for k, v := range p.Headers {
		req.Header.Set(k, v)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("upload %s: status %d", key, res.StatusCode)
	}
	return readBack(s, key, data)
}

func readBack(s blob.Store, key string, want []byte) error {
	rc, _, err := s.Open(context.Background(), key)
	if err != nil {
		return err
	}
	defer rc.Close()
	got, err := io.ReadAll(rc)
	if err != nil {
		return err
	}
	if !bytes.Equal(got, want) {
		return errors.New(key + ": read back different bytes")
	}
	return nil
}
