package e2e

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// connGauges is what a leak shows in: kiln serve's open fds and goroutines
// (read from its admin listener, /debug/pprof) and its project builder's
// open fds.
type connGauges struct {
	serveFDs, goroutines, builderFDs int
	// RSS is logged, not compared: it moves with caches and the GC.
	serveRSS, builderRSS int64
}

func (g connGauges) String() string {
	return fmt.Sprintf("kiln serve: %d fds, %d goroutines, %d MiB RSS; buildkitd: %d fds, %d MiB RSS",
		g.serveFDs, g.goroutines, g.serveRSS>>20, g.builderFDs, g.builderRSS>>20)
}

// connAdminAddr is the address of s's admin listener (s started with
// --admin-addr 127.0.0.1:0), from DATA/admin.addr.
func connAdminAddr(t *testing.T, s *server) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(s.Data, "admin.addr"))
	if err != nil {
		t.Fatalf("the admin listener's address: %v", err)
	}
	return strings.TrimSpace(string(b))
}

// connGoroutines counts kiln serve's goroutines from its goroutine profile.
func connGoroutines(t *testing.T, admin string) int {
	t.Helper()
	res, err := http.Get("http://" + admin + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(res.Body, 256))
	first, _, _ := strings.Cut(string(b), "\n")
	n, err := strconv.Atoi(strings.TrimPrefix(first, "goroutine profile: total "))
	if res.StatusCode != 200 || err != nil {
		t.Fatalf("goroutine profile: %d %q", res.StatusCode, first)
	}
	return n
}

func connMeasure(t *testing.T, s *server, admin string, builderPID int) connGauges {
	t.Helper()
	return connGauges{serveFDs: openFDs(s.pid()), goroutines: connGoroutines(t, admin), builderFDs: openFDs(builderPID),
		serveRSS: rssBytes(s.pid()), builderRSS: rssBytes(builderPID)}
}

// connSave runs one `kiln build --save` of dir with new content (so that
// every build pushes a new layer) and checks its output names no server
// path.
func connSave(t *testing.T, s *server, proj, dir string, i int) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, "n"), []byte(strconv.Itoa(i)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := s.mustKiln(t, dir, "build", "--project", proj, "--save", "--progress", "plain", ".")
	noServerPath(t, s, "the client's output", r.Stdout+r.Stderr)
}

// Sequential `kiln build --save` builds leave nothing open: every push
// used to leave 4 connections between the builder and kiln serve (idle in
// both for BuildKit's 2 minutes), so fds in both processes grew with every
// build. After connSaveBuilds builds, kiln serve's fds and goroutines and
// the builder's fds are where they were after the first builds, and they
// never grow far between.
func TestSavedBuildsLeaveNoConnections(t *testing.T) {
	t.Parallel()
	const connSaveBuilds = 40
	s := startServer(t, "--admin-addr", "127.0.0.1:0")
	admin := connAdminAddr(t, s)
	proj := s.createProject(t, "conn-leak")
	dir := writeContext(t, map[string]string{"Dockerfile": baseStages + "FROM busybox\nCOPY n /n\n"})

	// Warm up: the builder starts, its caches and kiln's fill.
	for i := range 2 {
		connSave(t, s, proj, dir, -1-i)
	}
	pid, _ := s.builderOf(t, proj)
	// A connection dialed and never used is closed by the header timeout
	// (10s); let the warm-up's go before the baseline.
	time.Sleep(11 * time.Second)
	base := connMeasure(t, s, admin, pid)
	t.Logf("baseline: %s", base)

	peak := base
	start := time.Now()
	for i := range connSaveBuilds {
		connSave(t, s, proj, dir, i)
		g := connMeasure(t, s, admin, pid)
		peak.serveFDs = max(peak.serveFDs, g.serveFDs)
		peak.builderFDs = max(peak.builderFDs, g.builderFDs)
		peak.goroutines = max(peak.goroutines, g.goroutines)
		peak.serveRSS, peak.builderRSS = max(peak.serveRSS, g.serveRSS), max(peak.builderRSS, g.builderRSS)
	}
	t.Logf("%d saved builds in %s; peak: %s", connSaveBuilds, time.Since(start).Round(time.Second), peak)
	if now, _ := s.builderOf(t, proj); now != pid {
		t.Fatalf("the builder restarted during the builds (pid %d, then %d): fds are not comparable", pid, now)
	}
	// Between builds some connections are open: the last push's, and those
	// BuildKit dialed and then did not use (about one a build), which kiln
	// closes after the 10s header timeout, so their number follows the
	// build rate, not the build count. The leak added 4 a build.
	if limit := 2 * connSaveBuilds; peak.serveFDs > base.serveFDs+limit || peak.builderFDs > base.builderFDs+limit {
		t.Errorf("fds grew during the builds: baseline %s, peak %s", base, peak)
	}
	var last connGauges
	deadline := time.Now().Add(15 * time.Second)
	for {
		last = connMeasure(t, s, admin, pid)
		flat := last.serveFDs <= base.serveFDs+2 && last.builderFDs <= base.builderFDs+2 && last.goroutines <= base.goroutines+10
		if flat {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %d saved builds and 15s: %s; baseline %s", connSaveBuilds, last, base)
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("after: %s", last)
}

// connUploads lists the upload sessions kiln's registry holds on disk for
// repo.
func connUploads(s *server, repo string) []string {
	es, _ := os.ReadDir(filepath.Join(s.Data, "registry", "docker", "registry", "v2", "repositories", repo, "_uploads"))
	var out []string
	for _, e := range es {
		out = append(out, e.Name())
	}
	return out
}

// connStorageFull expects an answer of 507 "registry storage full" that
// names no server path.
func connStorageFull(t *testing.T, s *server, what string, res *http.Response) {
	t.Helper()
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusInsufficientStorage || !strings.Contains(string(b), "registry storage full") {
		t.Errorf("%s on a full registry: HTTP %d %s; want 507 saying \"registry storage full\"", what, res.StatusCode, tail(string(b), 400))
	}
	noServerPath(t, s, "the client's output", string(b)+fmt.Sprint(res.Header))
}

// A push into a registry whose storage is full is refused with a clear
// error (not distribution's "invalid content range" on the next request,
// nor an error naming the storage path), the partial upload is removed at
// once (it would keep the disk full until the collector's grace passed),
// and once space is freed the next push works, without a restart, and the
// registry still passes the conformance workflows.
func TestRegistryStorageFull(t *testing.T) {
	t.Parallel()
	s := startServerOnDisk(t, 96<<20)
	proj := s.createProject(t, "regfull")
	repo := proj + "/app"
	c := s.oci(t, s.Token)
	_, pushed := c.pushImage(repo, "before", "pushed before the disk filled")

	// Uploads started while there was space, then the disk fills. A
	// failed upload's removal frees its partial data, so the disk is
	// filled again before each push.
	res, _ := c.expect(http.StatusAccepted, "POST", "/v2/"+repo+"/blobs/uploads/", nil)
	chunked := c.location(res)
	res, _ = c.expect(http.StatusAccepted, "POST", "/v2/"+repo+"/blobs/uploads/", nil)
	monolithic := c.location(res)
	var frees []func()
	fill := func() {
		frees = append(frees, fillDisk(t, s.Data))
	}

	layer := randomBytes(4 << 20)
	fill()
	t.Logf("disk filled: %d bytes free", freeBytes(t, s.Data))
	connStorageFull(t, s, "PATCH of a chunk", c.do("PATCH", chunked, layer,
		"Content-Type", "application/octet-stream", "Content-Range", fmt.Sprintf("0-%d", len(layer)-1)))
	fill()
	connStorageFull(t, s, "PUT of a whole blob", c.do("PUT", withDigest(monolithic, digest.FromBytes(layer)), layer,
		"Content-Type", "application/octet-stream"))
	fill()
	connStorageFull(t, s, "POST starting an upload", c.do("POST", "/v2/"+repo+"/blobs/uploads/", nil))
	// The failed uploads are gone at once, not after the collector's grace:
	// their space is free again, and the client learns the session is over.
	if left := connUploads(s, repo); len(left) > 0 {
		t.Errorf("upload sessions left after the storage-full failures: %v", left)
	}
	c.expectError(http.StatusNotFound, "BLOB_UPLOAD_UNKNOWN", "PATCH", chunked, []byte("more"),
		"Content-Type", "application/octet-stream")
	// A manifest that cannot be stored is refused the same way, and no
	// tag appears.
	connStorageFull(t, s, "PUT of a manifest", c.do("PUT", "/v2/"+repo+"/manifests/during",
		ociManifest(pushed[0], pushed[1:], "application/x-pushed-while-full", nil), "Content-Type", v1.MediaTypeImageManifest))
	c.expectError(http.StatusNotFound, "MANIFEST_UNKNOWN", "GET", "/v2/"+repo+"/manifests/during", nil)
	// What was pushed before is still served.
	c.expect(http.StatusOK, "GET", "/v2/"+repo+"/manifests/before", nil)

	// Space is freed: the next push works at once, no restart.
	for _, free := range frees {
		free()
	}
	c.pushImage(repo, "after", "pushed after space was freed")
	res, _ = c.expect(http.StatusAccepted, "POST", "/v2/"+repo+"/blobs/uploads/", nil)
	c.expect(http.StatusCreated, "PUT", withDigest(c.location(res), digest.FromBytes(layer)), layer, "Content-Type", "application/octet-stream")
	registryConformance(t, s)
}

// A client that goes away in the middle of a blob's body leaves no
// upload behind: clients start a failed blob over, so its partial data
// would only fill the disk until the collector's grace passed.
func TestRegistryAbandonedUploadRemoved(t *testing.T) {
	t.Parallel()
	s := sharedServer(t)
	proj := s.createProject(t, "regabandon")
	repo := proj + "/app"
	c := s.oci(t, s.Token)
	res, _ := c.expect(http.StatusAccepted, "POST", "/v2/"+repo+"/blobs/uploads/", nil)
	loc := c.location(res)
	if len(connUploads(s, repo)) != 1 {
		t.Fatalf("upload sessions after POST: %v, want 1", connUploads(s, repo))
	}
	conn, err := net.Dial("tcp", strings.TrimPrefix(s.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(conn, "PATCH %s HTTP/1.1\r\nHost: %s\r\nAuthorization: %s\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n",
		loc, strings.TrimPrefix(s.URL, "http://"), c.auth, 8<<20)
	conn.Write(randomBytes(256 << 10))
	time.Sleep(200 * time.Millisecond)
	conn.Close()
	eventually(t, 10*time.Second, "the abandoned upload to be removed", func() bool { return len(connUploads(s, repo)) == 0 })
	c.expectError(http.StatusNotFound, "BLOB_UPLOAD_UNKNOWN", "PATCH", loc, []byte("more"), "Content-Type", "application/octet-stream")
}

// A user saving a build into kiln's registry when its storage is full
// reads "registry storage full" (it was "invalid content range"), and no
// server path; once space is freed the same command works, without a
// restart of anything.
func TestSaveToFullRegistry(t *testing.T) {
	t.Parallel()
	s := startServerOnDisk(t, 320<<20)
	proj := s.createProject(t, "savefull")
	// 24 MiB that do not compress: the builder compresses the layer into
	// its content store (same disk), then pushes it into the registry.
	dir := writeContext(t, map[string]string{"Dockerfile": baseStages + "FROM busybox\nRUN head -c 25165824 /dev/urandom > /blob\n"})
	s.mustKiln(t, dir, "build", "--project", proj, "--progress", "plain", ".")

	// Room for the builder's compressed copy and its bookkeeping, not for
	// the registry's too.
	free := fillDiskLeaving(t, s.Data, 36<<20)
	r := s.kiln(t, dir, nil, "build", "--project", proj, "--save", "--progress", "plain", ".")
	if r.Err == nil {
		t.Fatalf("kiln build --save into a full registry succeeded:\n%s", tail(r.Stderr, 2000))
	}
	if i := strings.Index(r.Stderr, "registry storage full"); i < 0 {
		t.Errorf("kiln build --save into a full registry does not say \"registry storage full\":\n%s", tail(r.Stderr, 3000))
	} else {
		line := r.Stderr[strings.LastIndex(r.Stderr[:i], "\n")+1:]
		line, _, _ = strings.Cut(line, "\n")
		t.Logf("the client read: %s", line)
	}
	if strings.Contains(r.Stderr, "invalid content range") {
		t.Errorf("the client still reads distribution's \"invalid content range\":\n%s", tail(r.Stderr, 3000))
	}
	noServerPath(t, s, "the client's output", r.Stdout+r.Stderr)
	if left := connUploads(s, proj); len(left) > 0 {
		t.Errorf("upload sessions left after the failed push: %v", left)
	}

	free()
	r = s.mustKiln(t, dir, "build", "--project", proj, "--save", "--progress", "plain", ".")
	noServerPath(t, s, "the client's output", r.Stdout+r.Stderr)
	if !strings.Contains(r.Stderr, "saved to kiln's registry as") {
		t.Errorf("the save after space was freed did not say where it went:\n%s", tail(r.Stderr, 2000))
	}
}
