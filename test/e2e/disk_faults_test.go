package e2e

// Faults of kiln's own disks and of what is uploaded to them: the data disk
// filling up (the database, contexts and builders' state live on it), and
// uploads that are too big, corrupted or cut off (RELIABILITY.md rows 3
// and 5).

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	cliv1 "github.com/depot/depot-go/proto/depot/cli/v1"

	kilnv1 "github.com/kiln-dev/kiln/gen/kiln/v1"
)

// diskReadyz is GET /readyz: its status code and body.
func diskReadyz(t *testing.T, s *server) (int, string) {
	t.Helper()
	res, err := (&http.Client{Timeout: 10 * time.Second}).Get(s.URL + "/readyz")
	if err != nil {
		t.Fatalf("GET /readyz: %v", err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

// When kiln's data disk fills up, a build that ends meanwhile is not left
// running: its end is kept and written as soon as there is room again. A
// build whose client keeps reporting is not taken for abandoned although
// its reports cannot be written. Users are told the disk is full (not
// "internal error"), /readyz says so, and the moment space is freed
// readiness returns and new builds work.
func TestDataDiskFull(t *testing.T) {
	t.Parallel()
	const healthTimeout = 3 * time.Second
	s := startServerOnDisk(t, 256<<20, "--health-timeout", healthTimeout.String())
	proj := s.createProject(t, "full-disk")
	ctxDir := writeContext(t, map[string]string{"Dockerfile": baseStages + "FROM busybox\nRUN echo fine > /fine\n"})
	s.mustKiln(t, ctxDir, "build", "--project", proj, "--progress", "plain", ".")
	if code, body := diskReadyz(t, s); code != http.StatusOK {
		t.Fatalf("/readyz before the disk filled: %d %s", code, body)
	}

	// A client build holds its builder when the disk fills, then ends;
	// another one goes on reporting health for longer than the timeout.
	id, tok := s.createBuild(t, proj, s.Token)
	s.activeConnection(t, id, tok)
	alive, aliveTok := s.createBuild(t, proj, s.Token)
	s.activeConnection(t, alive, aliveTok)
	free := fillDisk(t, s.Data)
	full := time.Now()
	t.Logf("disk filled: %d bytes free", freeBytes(t, s.Data))
	_, err := s.api().FinishBuild(t.Context(), bearer(&cliv1.FinishBuildRequest{BuildId: id,
		Result: &cliv1.FinishBuildRequest_Success{Success: &cliv1.FinishBuildRequest_BuildSuccess{}}}, tok))
	if err != nil {
		t.Errorf("FinishBuild on a full disk: %v; want its outcome kept until it can be written", err)
		noServerPath(t, s, "FinishBuild", err.Error())
	}
	if st := s.buildStatus(t, proj, id); st != cliv1.BuildStatus_BUILD_STATUS_FINISHED {
		t.Errorf("the build that finished on a full disk reads %v, want finished", st)
	}

	// New builds are refused saying why, and readiness fails saying so.
	r := s.kiln(t, ctxDir, nil, "build", "--project", proj, "--progress", "plain", ".")
	if r.Err == nil {
		t.Errorf("a build on a full data disk succeeded")
	}
	if !strings.Contains(r.Stderr, "kiln's data disk is full (") || strings.Contains(r.Stderr, "internal error") {
		t.Errorf("a build on a full data disk: want \"kiln's data disk is full (N bytes free)\", got:\n%s", tail(r.Stderr, 3000))
	}
	noServerPath(t, s, "kiln build on a full disk", r.Stderr)
	t.Logf("kiln build on a full disk:\n%s", tail(r.Stderr, 400))
	code, body := diskReadyz(t, s)
	t.Logf("/readyz on a full disk: %d %s", code, body)
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "data disk is full") {
		t.Errorf("/readyz on a full disk: %d %q; want 503 saying the data disk is full", code, body)
	}
	noServerPath(t, s, "/readyz", body)
	for time.Since(full) < 2*healthTimeout {
		if _, err := s.api().ReportBuildHealth(t.Context(), bearer(&cliv1.ReportBuildHealthRequest{BuildId: alive,
			Platform: cliv1.BuilderPlatform_BUILDER_PLATFORM_AMD64}, aliveTok)); err != nil {
			t.Errorf("ReportBuildHealth on a full disk: %v", err)
		}
		time.Sleep(healthTimeout / 6)
	}
	if st := s.buildStatus(t, proj, alive); st != cliv1.BuildStatus_BUILD_STATUS_RUNNING {
		t.Errorf("a build whose client reported health all along reads %v after %s on a full disk, want running", st, time.Since(full).Round(time.Second))
	}

	// Space returns: at once ready, the kept end is written, builds work.
	free()
	freed := time.Now()
	eventually(t, 10*time.Second, "/readyz to answer 200 after space was freed", func() bool {
		code, _ := diskReadyz(t, s)
		return code == http.StatusOK
	})
	t.Logf("ready %s after space was freed", time.Since(freed).Round(time.Millisecond))
	r = s.kiln(t, ctxDir, nil, "build", "--project", proj, "--progress", "plain", ".")
	if r.Err != nil {
		t.Errorf("the first build after space was freed (%s after): %v\n%s", time.Since(freed).Round(time.Millisecond), r.Err, tail(r.Stderr, 3000))
	}
	// The end was written to the database, not only kept in memory: it
	// survives a crash of kiln serve.
	s.kill9(t)
	s.start(t)
	if st := s.buildStatus(t, proj, id); st != cliv1.BuildStatus_BUILD_STATUS_FINISHED {
		t.Errorf("after a restart the build that finished on a full disk reads %v, want finished", st)
	}
}

// diskRawPut sends a PUT to an upload URL by hand: its headers (with
// Content-Length declared), then body, then — if cut — closes the
// connection without sending the rest, as a dropped network does. It
// returns the status line and body of the answer, "" if none came.
func diskRawPut(t *testing.T, rawURL string, declared int, body []byte, cut bool) string {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.DialTimeout("tcp", u.Host, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "PUT %s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\nContent-Type: application/octet-stream\r\n\r\n", u.RequestURI(), u.Host, declared)
	c.Write(body)
	if cut {
		c.(*net.TCPConn).CloseWrite()
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return ""
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.Status + " " + string(b)
}

// diskUploadsLeft lists what the server's upload storage holds for key
// and its uploads in progress (temp files): after a refused or cut upload,
// both must be empty.
func diskUploadsLeft(t *testing.T, s *server, key string) []string {
	t.Helper()
	var left []string
	filepath.WalkDir(filepath.Join(s.Data, "blobs"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && (strings.Contains(p, key) || strings.Contains(p, string(filepath.Separator)+"tmp"+string(filepath.Separator))) {
			left = append(left, p)
		}
		return nil
	})
	return left
}

// RELIABILITY row 5, from the uploader's side: an upload whose bytes are
// flipped or whose stream is cut is refused before any build starts, the
// error names the digest or the missing bytes, nothing of it is kept, and
// the same URL then takes the intact upload, which builds.
func TestCorruptUploadRefusedBeforeBuild(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	proj := s.createProject(t, "corrupt-uploads")
	good := contextArchive(t, map[string]string{"Dockerfile": baseStages + "FROM busybox\nRUN echo intact-context\n"})
	api := s.sourceAPI()
	gen := func() *kilnv1.GenerateUploadURLResponse {
		res, err := api.GenerateUploadURL(t.Context(), bearer(&kilnv1.GenerateUploadURLRequest{Project: projectRef(proj),
			Size: int64(len(good)), Sha256: sha256Hex(good)}, s.Token))
		if err != nil {
			t.Fatal(err)
		}
		return res.Msg
	}
	refusedBeforeBuild := func(what, key string) {
		t.Helper()
		_, err := api.CreateBuild(t.Context(), bearer(&kilnv1.CreateBuildRequest{Project: projectRef(proj), ContextKey: key}, s.Token))
		if connect.CodeOf(err) != connect.CodeFailedPrecondition || !strings.Contains(err.Error(), "not been uploaded") {
			t.Errorf("CreateBuild after %s: %v; want FailedPrecondition saying the context was not uploaded", what, err)
		}
		if err != nil {
			noServerPath(t, s, "CreateBuild after "+what, err.Error())
		}
		if left := diskUploadsLeft(t, s, key); len(left) > 0 {
			t.Errorf("after %s the server keeps: %v", what, left)
		}
	}

	// A flipped byte: refused naming the digest it has and the one declared.
	flip := gen()
	tampered := bytes.Clone(good)
	tampered[len(tampered)/2] ^= 0x01
	code, body := curlPut(t, flip.Url, flip.Headers, tampered)
	if code != http.StatusBadRequest || !strings.Contains(body, "sha256:"+sha256Hex(tampered)) || !strings.Contains(body, "sha256:"+sha256Hex(good)) {
		t.Errorf("PUT with a flipped byte: HTTP %d %q; want 400 naming both digests", code, body)
	}
	noServerPath(t, s, "the flipped-byte PUT", body)
	refusedBeforeBuild("a flipped byte", flip.ContextKey)

	// A cut stream: half the declared bytes, then the connection closes.
	cut := gen()
	answer := diskRawPut(t, cut.Url, len(good), good[:len(good)/2], true)
	t.Logf("answer to the cut upload: %q", answer)
	if answer != "" && !strings.HasPrefix(answer, "400") {
		t.Errorf("a cut upload was answered %q; want 400 (or no answer: the uploader is gone)", answer)
	}
	noServerPath(t, s, "the cut PUT", answer)
	refusedBeforeBuild("a cut stream", cut.ContextKey)
	builds, err := s.api().ListBuilds(t.Context(), bearer(&cliv1.ListBuildsRequest{ProjectId: proj}, s.Token))
	if err != nil || len(builds.Msg.Builds) != 0 {
		t.Errorf("builds of the project after refused uploads: %v, %v; want none", builds.Msg.GetBuilds(), err)
	}

	// The same URL takes the intact upload, and it builds.
	if code, body := curlPut(t, cut.Url, cut.Headers, good); code != http.StatusOK {
		t.Fatalf("the intact upload after a cut one: HTTP %d %s", code, body)
	}
	cr, err := api.CreateBuild(t.Context(), bearer(&kilnv1.CreateBuildRequest{Project: projectRef(proj), ContextKey: cut.ContextKey}, s.Token))
	if err != nil {
		t.Fatal(err)
	}
	if w := s.watch(t, s.Token, cr.Msg.BuildId, 3*time.Minute); w.last.Status != kilnv1.BuildStatus_BUILD_STATUS_SUCCEEDED || w.stepNamed("intact-context") == nil {
		t.Errorf("build of the intact upload: %v %q", w.last.Status, w.last.Error)
	}
}

// RELIABILITY row 3's upload part, from the attacker's side: an upload
// over the project's quota or the size limit is refused before a byte of
// it is written: at GenerateUploadURL for a declared size, and from the
// PUT's headers alone (the body never sent) for an undeclared one.
func TestUploadOverQuotaRefusedBeforeWriting(t *testing.T) {
	t.Parallel()
	const maxSize, quota = 1 << 20, 3 << 19 // one context of 1 MiB, 1.5 MiB per project
	s := startServer(t, "--max-context-size", fmt.Sprint(maxSize), "--max-context-bytes-per-project", fmt.Sprint(quota))
	proj := s.createProject(t, "quota")
	tok := s.projectToken(t, proj)
	api := s.sourceAPI()
	gen := func(size int64) (*kilnv1.GenerateUploadURLResponse, error) {
		res, err := api.GenerateUploadURL(t.Context(), bearer(&kilnv1.GenerateUploadURLRequest{Project: projectRef(proj), Size: size}, tok))
		if err != nil {
			return nil, err
		}
		return res.Msg, nil
	}
	// Declared sizes: over the size limit, then over what the quota has left.
	for _, size := range []int64{maxSize + 1, 4 << 30} {
		if _, err := gen(size); connect.CodeOf(err) != connect.CodeResourceExhausted {
			t.Errorf("declared upload of %d bytes: %v; want ResourceExhausted", size, err)
		}
	}
	first, err := gen(maxSize)
	if err != nil {
		t.Fatal(err)
	}
	_, err = gen(maxSize)
	if connect.CodeOf(err) != connect.CodeResourceExhausted || !strings.Contains(err.Error(), "quota") {
		t.Errorf("a declared upload over the quota: %v; want ResourceExhausted naming the quota", err)
	}
	if err != nil {
		noServerPath(t, s, "GenerateUploadURL over the quota", err.Error())
	}
	// Undeclared: the URL is for what is left (0.5 MiB). A PUT declaring
	// more is answered 413 from its headers: the body is never sent.
	rest, err := gen(0)
	if err != nil {
		t.Fatal(err)
	}
	if rest.MaxSize != quota-maxSize {
		t.Errorf("undeclared upload URL for %d bytes, want the %d the quota has left", rest.MaxSize, quota-maxSize)
	}
	answer := diskRawPut(t, rest.Url, int(rest.MaxSize)+1, nil, false)
	if !strings.HasPrefix(answer, "413") {
		t.Errorf("PUT declaring %d bytes to a URL for %d, body unsent: %q; want 413 at once", rest.MaxSize+1, rest.MaxSize, answer)
	}
	if left := diskUploadsLeft(t, s, rest.ContextKey); len(left) > 0 {
		t.Errorf("the refused upload left: %v", left)
	}
	// The upload within the quota still goes through.
	if code, body := curlPut(t, first.Url, first.Headers, bytes.Repeat([]byte("k"), maxSize)); code != http.StatusOK {
		t.Errorf("the upload within the quota: HTTP %d %s", code, body)
	}
}

// The issue's own scenario: a build fills the data disk from inside a RUN
// step. It fails with its step's error and is recorded failed, not left
// running; no user ever reads "internal error"; builds work again within
// seconds, without anyone freeing space. BuildKit keeps the failed step's
// snapshot when writing its history record hit the full disk too, and only
// its garbage collection removes it (the minute of failing builds the
// issue saw; forever on a disk full to the last byte, where the collection
// cannot write either). kiln restarts the builder that hit ENOSPC and
// releases its disk reserve first, so the new buildkitd collects at once.
func TestDataDiskFilledByBuild(t *testing.T) {
	t.Parallel()
	s := startServerOnDisk(t, 256<<20)
	proj := s.createProject(t, "filler")
	ok := writeContext(t, map[string]string{"Dockerfile": baseStages + "FROM busybox\nRUN echo fine > /fine\n"})
	s.mustKiln(t, ok, "build", "--project", proj, "--progress", "plain", ".")
	filler := writeContext(t, map[string]string{"Dockerfile": baseStages + "FROM busybox\nRUN dd if=/dev/zero of=/big bs=1M count=1024\n"})
	r := s.kiln(t, filler, nil, "build", "--project", proj, "--progress", "plain", ".")
	if r.Err == nil {
		t.Fatalf("a build writing 1 GiB on a 256 MiB disk succeeded")
	}
	if !strings.Contains(r.Stderr, "No space left on device") {
		t.Errorf("the filling build's output does not name its step's error:\n%s", tail(r.Stderr, 2000))
	}
	noServerPath(t, s, "the filling build", r.Stderr)
	id := s.latestBuild(t, proj)
	eventually(t, 30*time.Second, "the filling build to be recorded failed", func() bool {
		return s.buildStatus(t, proj, id) == cliv1.BuildStatus_BUILD_STATUS_FAILED
	})
	// Until BuildKit releases the failed step's files the disk may still be
	// full: builds then fail saying so, never with an internal error.
	start := time.Now()
	for {
		r := s.kiln(t, ok, nil, "build", "--project", proj, "--progress", "plain", ".")
		if strings.Contains(r.Stderr, "internal error") {
			t.Fatalf("a build after the disk filled: %s", tail(r.Stderr, 2000))
		}
		noServerPath(t, s, "a build after the disk filled", r.Stderr)
		if r.Err == nil {
			t.Logf("builds work again %s after the filling build failed (%d bytes free)", time.Since(start).Round(time.Millisecond), freeBytes(t, s.Data))
			break
		}
		if !strings.Contains(r.Stderr, "kiln's data disk is full (") {
			t.Logf("a build after the disk filled failed otherwise:\n%s", tail(r.Stderr, 1500))
		}
		if time.Since(start) > 45*time.Second {
			t.Fatalf("builds still fail 45s after the filling build ended (%d bytes free):\n%s", freeBytes(t, s.Data), tail(r.Stderr, 2000))
		}
		time.Sleep(2 * time.Second)
	}
	// Ready again once the kept end is written; then it survives a crash.
	eventually(t, 10*time.Second, "/readyz to answer 200", func() bool {
		code, _ := diskReadyz(t, s)
		return code == http.StatusOK
	})
	s.kill9(t)
	s.start(t)
	if st := s.buildStatus(t, proj, id); st != cliv1.BuildStatus_BUILD_STATUS_FAILED {
		t.Errorf("after a restart the filling build reads %v, want failed", st)
	}
}
