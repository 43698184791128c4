package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"mime/multipart"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	cliv1 "github.com/depot/depot-go/proto/depot/cli/v1"
	"github.com/opencontainers/go-digest"

	cliv1beta1 "github.com/kiln-dev/kiln/gen/depot/cli/v1beta1"
	"github.com/kiln-dev/kiln/gen/depot/cli/v1beta1/cliv1beta1connect"
	kilnv1 "github.com/kiln-dev/kiln/gen/kiln/v1"
)

// Issue 12, from the attacker's side: each test holds only project A's
// token (or nothing) and tries what a hostile tenant would.

// projectToken makes a project token for project.
func (s *server) projectToken(t *testing.T, project string) string {
	t.Helper()
	r := s.mustKiln(t, t.TempDir(), "tokens", "create", "--project", project)
	return strings.TrimSpace(r.Stdout)
}

// Registry parameters in a form body, which distribution reads (and
// prefers over the query), are refused; through the query, a mount from
// another project is not done, with or without from.
func TestRegistryFormBodyFromTheAttackersSide(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	projA, projB := s.createProject(t, "attacker"), s.createProject(t, "victim")
	tokA := s.projectToken(t, projA)
	admin, a := s.oci(t, s.Token), s.oci(t, tokA)
	bImg, bBlobs := admin.pushImage(projB+"/secret", "v1", "B's secret")
	a.pushImage(projA+"/app", "v1", "A's own")
	layerB := bBlobs[1].Digest.String()
	upload := "/v2/" + projA + "/app/blobs/uploads/"

	form := func(kv ...string) []byte {
		v := url.Values{}
		for i := 0; i+1 < len(kv); i += 2 {
			v.Set(kv[i], kv[i+1])
		}
		return []byte(v.Encode())
	}
	var mp bytes.Buffer
	mw := multipart.NewWriter(&mp)
	mw.WriteField("mount", layerB)
	mw.WriteField("from", projB+"/secret")
	mw.Close()
	res, _ := a.expect(http.StatusAccepted, "POST", upload, nil)
	session := a.location(res)
	const formType = "application/x-www-form-urlencoded"
	for _, c := range []struct {
		name, method, path, ct string
		body                   []byte
	}{
		{"mount: mount and from in the body", "POST", upload, formType, form("mount", layerB, "from", projB+"/secret")},
		{"mount: from in the body over the query's", "POST", upload + "?mount=" + layerB + "&from=" + projA + "/app", formType, form("from", projB+"/secret")},
		{"mount: mount in the body, no from", "POST", upload, formType, form("mount", layerB)},
		{"mount: multipart", "POST", upload, mw.FormDataContentType(), mp.Bytes()},
		{"push: digest in the body", "PUT", session, formType, form("digest", digest.FromString("x").String())},
		{"push: manifest as a form", "PUT", "/v2/" + projA + "/app/manifests/v2", formType, form("a", "b")},
		{"delete: B's manifest", "DELETE", "/v2/" + projB + "/secret/manifests/" + bImg.Digest.String(), formType, form("a", "b")},
		{"tags: B's list", "GET", "/v2/" + projB + "/secret/tags/list", formType, form("n", "1")},
	} {
		res := a.expectError(http.StatusUnsupportedMediaType, "UNSUPPORTED", c.method, c.path, c.body, "Content-Type", c.ct)
		if res.Header.Get("Docker-Content-Digest") != "" {
			t.Errorf("%s: answered with a digest", c.name)
		}
	}
	for _, q := range []string{"?mount=" + layerB + "&from=" + projB + "/secret", "?mount=" + layerB, "?mount=" + layerB + "&from=" + projA + "/app"} {
		res, _ := a.expect(http.StatusAccepted, "POST", upload+q, nil)
		if res.Header.Get("Docker-Content-Digest") != "" {
			t.Errorf("POST %s mounted B's layer", q)
		}
	}
	a.expectError(http.StatusNotFound, "BLOB_UNKNOWN", "GET", "/v2/"+projA+"/app/blobs/"+layerB, nil)
	admin.expect(http.StatusOK, "GET", "/v2/"+projB+"/secret/manifests/v1", nil)
	admin.expect(http.StatusOK, "GET", "/v2/"+projB+"/secret/blobs/"+layerB, nil)
	_, body := admin.expect(http.StatusOK, "GET", "/v2/"+projB+"/secret/tags/list", nil)
	if !strings.Contains(string(body), `"v1"`) {
		t.Errorf("B's tags after the attack: %s", body)
	}
	r := s.mustKiln(t, t.TempDir(), "audit", "--kind", "denied")
	if !strings.Contains(r.Stdout, "form-encoded body") {
		t.Errorf("the form-body attempts are not in the audit log:\n%s", tail(r.Stdout, 2000))
	}
}

// rssKB is a process's resident memory.
func rssKB(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
			return n
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

// holdBody yields n bytes, then blocks until release is closed (or 20s).
type holdBody struct {
	n       int
	release chan struct{}
}

func (b *holdBody) Read(p []byte) (int, error) {
	if b.n == 0 {
		select {
		case <-b.release:
		case <-time.After(20 * time.Second):
		}
		return 0, io.ErrUnexpectedEOF
	}
	m := min(len(p), b.n)
	clear(p[:m])
	b.n -= m
	return m, nil
}

// Anonymous requests with large bodies are refused before their bodies
// are read: the answer comes while the body stalls after 4 KiB, and 64
// concurrent 15 MB requests don't grow the server's memory.
func TestAnonymousBodiesRefusedUnread(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	proc := "/depot.core.v1.ProjectService/ListProjects"
	for _, grpc := range []bool{false, true} {
		body := &holdBody{n: 4 << 10, release: make(chan struct{})}
		req, _ := http.NewRequest("POST", s.URL+proc, io.NopCloser(body))
		req.ContentLength = 15 << 20
		req.Header.Set("Content-Type", "application/json")
		if grpc {
			req.Header.Set("Content-Type", "application/grpc-web+proto")
		}
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		res, err := http.DefaultClient.Do(req.WithContext(ctx))
		if err != nil {
			cancel()
			t.Fatalf("no answer while the body stalls (grpc-web %v): %v", grpc, err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		cancel()
		close(body.release)
		if grpc {
			if res.Header.Get("Grpc-Status") != "16" || !strings.Contains(res.Header.Get("Grpc-Message"), "token") {
				t.Errorf("gRPC-Web: HTTP %d grpc-status %q %q; want 16 (unauthenticated) naming the token", res.StatusCode, res.Header.Get("Grpc-Status"), res.Header.Get("Grpc-Message"))
			}
			continue
		}
		var e struct{ Code, Message string }
		json.Unmarshal(b, &e)
		if res.StatusCode != http.StatusUnauthorized || e.Code != "unauthenticated" || !strings.Contains(e.Message, "token") {
			t.Errorf("Connect: HTTP %d %s; want 401 unauthenticated naming the token", res.StatusCode, b)
		}
	}

	pid := s.cmd.Process.Pid
	before := rssKB(t, pid)
	zeros := make([]byte, 15<<20)
	var wg sync.WaitGroup
	var answered atomic.Int32
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest("POST", s.URL+proc, bytes.NewReader(zeros))
			req.Header.Set("Content-Type", "application/json")
			client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{}}
			defer client.CloseIdleConnections()
			if res, err := client.Do(req); err == nil {
				io.Copy(io.Discard, res.Body)
				res.Body.Close()
				if res.StatusCode == http.StatusUnauthorized {
					answered.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	after := rssKB(t, pid)
	t.Logf("server RSS %d MB before, %d MB after 64 anonymous 15 MB requests (%d answered 401)", before>>10, after>>10, answered.Load())
	if after-before > 100<<10 {
		t.Errorf("server RSS grew by %d MB from anonymous requests", (after-before)>>10)
	}
	if answered.Load() == 0 {
		t.Errorf("no anonymous request was answered 401")
	}
	// The server still answers, and the public login reads its small body.
	if _, err := s.loginAPI().StartLogin(t.Context(), connect.NewRequest(&cliv1beta1.StartLoginRequest{})); err != nil {
		t.Errorf("StartLogin after the flood: %v", err)
	}
	if res, err := http.Get(s.URL + "/healthz"); err != nil || res.StatusCode != 200 {
		t.Fatalf("healthz after the flood: %v", err)
	}
}

// 1,000 connections trickle one byte of a body and stall: on an upload
// URL, the anonymous login, and the registry with A's token. Each is
// dropped once its body has sent nothing for --body-timeout; meanwhile
// and after, the server answers at once and holds no more descriptors
// than before.
func TestSlowBodiesDroppedFromTheAttackersSide(t *testing.T) {
	t.Parallel()
	const timeout = 2 * time.Second
	s := startServer(t, "--body-timeout", timeout.String())
	projA := s.createProject(t, "slowpoke")
	tokA := s.projectToken(t, projA)
	up, err := s.sourceAPI().GenerateUploadURL(t.Context(), bearer(&kilnv1.GenerateUploadURLRequest{Project: projectRef(projA)}, tokA))
	if err != nil {
		t.Fatal(err)
	}
	upURL, _ := url.Parse(up.Msg.Url)
	res, _ := s.oci(t, tokA).expect(http.StatusAccepted, "POST", "/v2/"+projA+"/app/blobs/uploads/", nil)
	session := s.oci(t, tokA).location(res)
	basic := "Basic " + base64.StdEncoding.EncodeToString([]byte("x-token:"+tokA))
	heads := []string{
		"PUT " + upURL.RequestURI() + " HTTP/1.1\r\nHost: kiln\r\nContent-Length: 1000\r\n",
		"POST /depot.cli.v1beta1.LoginService/StartLogin HTTP/1.1\r\nHost: kiln\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n",
		"PATCH " + session + " HTTP/1.1\r\nHost: kiln\r\nAuthorization: " + basic + "\r\nContent-Type: application/octet-stream\r\nContent-Length: 1000\r\n",
	}
	pid := s.cmd.Process.Pid
	fdsBefore := openFDs(pid)

	const n = 1000
	addr := strings.TrimPrefix(s.URL, "http://")
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := range n {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		conns = append(conns, c)
		if _, err := io.WriteString(c, heads[i%len(heads)]+"\r\nx"); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
	}
	start := time.Now()
	t0 := time.Now()
	if res, err := (&http.Client{Timeout: 2 * time.Second}).Get(s.URL + "/healthz"); err != nil || res.StatusCode != 200 || time.Since(t0) > time.Second {
		t.Fatalf("healthz while 1,000 bodies stall: %v after %v", err, time.Since(t0))
	}

	var wg sync.WaitGroup
	var dropped atomic.Int32
	for _, c := range conns {
		wg.Add(1)
		go func(c net.Conn) {
			defer wg.Done()
			c.SetReadDeadline(time.Now().Add(timeout + 20*time.Second))
			r := bufio.NewReader(c)
			if res, err := http.ReadResponse(r, nil); err == nil {
				io.Copy(io.Discard, res.Body)
				res.Body.Close()
			}
			// The server closes the connection: EOF or a reset, never our deadline.
			_, err := r.ReadByte()
			var ne net.Error
			if err != nil && !(errors.As(err, &ne) && ne.Timeout()) {
				dropped.Add(1)
			}
		}(c)
	}
	wg.Wait()
	t.Logf("%d of %d stalled connections dropped after %v", dropped.Load(), n, time.Since(start))
	if dropped.Load() != n {
		t.Errorf("%d of %d stalled connections were dropped within %v", dropped.Load(), n, timeout+20*time.Second)
	}
	eventually(t, 10*time.Second, "the server's descriptors back to what they were", func() bool { return openFDs(pid) <= fdsBefore+10 })
	t0 = time.Now()
	if _, err := s.loginAPI().StartLogin(t.Context(), connect.NewRequest(&cliv1beta1.StartLoginRequest{})); err != nil || time.Since(t0) > time.Second {
		t.Errorf("StartLogin after the attack: %v after %v", err, time.Since(t0))
	}
	// The upload URL was never used by the stalled bodies: it still works.
	if code, body := curlPut(t, up.Msg.Url, up.Msg.Headers, contextArchive(t, map[string]string{"Dockerfile": "FROM scratch\n"})); code != 200 {
		t.Errorf("upload after the attack: %d %s", code, body)
	}
}

// loginClientFrom is a LoginService client whose connections come from
// the loopback address ip.
func (s *server) loginClientFrom(ip string) cliv1beta1connect.LoginServiceClient {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	return cliv1beta1connect.NewLoginServiceClient(&http.Client{Transport: &http.Transport{DialContext: d.DialContext}}, s.URL)
}

// One address (a RUN step's, say) takes what device-login slots it can:
// it gets its share and then ResourceExhausted saying why; another
// address still logs in.
func TestLoginSlotsPerAddressFromTheAttackersSide(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	attacker, other := s.loginClientFrom("127.0.0.1"), s.loginClientFrom("127.0.0.2")
	got := 0
	var last error
	for range 50 {
		if _, last = attacker.StartLogin(t.Context(), connect.NewRequest(&cliv1beta1.StartLoginRequest{})); last != nil {
			break
		}
		got++
	}
	if got != 10 || connect.CodeOf(last) != connect.CodeResourceExhausted || !strings.Contains(last.Error(), "your address") {
		t.Errorf("one address started %d logins, then %v; want 10, then ResourceExhausted naming the address", got, last)
	}
	for range 3 {
		if _, err := other.StartLogin(t.Context(), connect.NewRequest(&cliv1beta1.StartLoginRequest{})); err != nil {
			t.Fatalf("another address while the first is full: %v", err)
		}
	}
	// The device login still works end to end for the other address.
	st, err := other.StartLogin(t.Context(), connect.NewRequest(&cliv1beta1.StartLoginRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	approval := st.Msg.ApproveUrl[strings.LastIndex(st.Msg.ApproveUrl, "/")+1:]
	s.mustKiln(t, t.TempDir(), "login", "--approve", approval)
	if tok, err := s.finishLogin(t.Context(), st.Msg.Id); err != nil || !strings.HasPrefix(tok, "kiln_org_") {
		t.Errorf("finishing the other address's login: %q, %v", tok, err)
	}
}

// A build token asking about another tenant's build hears exactly what
// it hears for a build that does not exist.
func TestBuildTokenCannotTellOthersBuildsExist(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	projA, projB := s.createProject(t, "attacker"), s.createProject(t, "victim")
	_, tokA := s.createBuild(t, projA, s.Token)
	buildB, _ := s.createBuild(t, projB, s.Token)
	const missing = "nosuchbuild00"
	api := s.api()
	calls := map[string]func(id string) error{
		"GetBuildKitConnection": func(id string) error {
			_, err := api.GetBuildKitConnection(t.Context(), bearer(&cliv1.GetBuildKitConnectionRequest{BuildId: id, Platform: cliv1.BuilderPlatform_BUILDER_PLATFORM_AMD64}, tokA))
			return err
		},
		"ReportBuildHealth": func(id string) error {
			_, err := api.ReportBuildHealth(t.Context(), bearer(&cliv1.ReportBuildHealthRequest{BuildId: id}, tokA))
			return err
		},
		"FinishBuild": func(id string) error {
			_, err := api.FinishBuild(t.Context(), bearer(&cliv1.FinishBuildRequest{BuildId: id}, tokA))
			return err
		},
		"kiln GetBuild": func(id string) error {
			_, err := s.sourceAPI().GetBuild(t.Context(), bearer(&kilnv1.GetBuildRequest{BuildId: id}, tokA))
			return err
		},
		"kiln CancelBuild": func(id string) error {
			_, err := s.sourceAPI().CancelBuild(t.Context(), bearer(&kilnv1.CancelBuildRequest{BuildId: id}, tokA))
			return err
		},
	}
	for name, call := range calls {
		other, none := call(buildB), call(missing)
		var ce1, ce2 *connect.Error
		errors.As(other, &ce1)
		errors.As(none, &ce2)
		if ce1 == nil || ce2 == nil || ce1.Code() != connect.CodeNotFound || ce2.Code() != connect.CodeNotFound ||
			strings.ReplaceAll(ce1.Message(), buildB, "ID") != strings.ReplaceAll(ce2.Message(), missing, "ID") {
			t.Errorf("%s: B's build: %v; a missing build: %v; want the same NotFound", name, other, none)
		}
	}
	// Refusals that don't depend on the id are the same for any project.
	for _, proj := range []string{projB, "nosuchproject"} {
		_, err := api.ListBuilds(t.Context(), bearer(&cliv1.ListBuildsRequest{ProjectId: proj}, tokA))
		if connect.CodeOf(err) != connect.CodePermissionDenied {
			t.Errorf("build token listing %s: %v; want PermissionDenied", proj, err)
		}
	}
	// B's build is untouched, and the probes are audited.
	if b, err := s.sourceAPI().GetBuild(t.Context(), bearer(&kilnv1.GetBuildRequest{BuildId: buildB}, s.Token)); err != nil || b.Msg.Build.Status != kilnv1.BuildStatus_BUILD_STATUS_RUNNING {
		t.Errorf("B's build after the probes: %v", err)
	}
	r := s.mustKiln(t, t.TempDir(), "audit", "--kind", "denied")
	if !strings.Contains(r.Stdout, "another project") {
		t.Errorf("probes of B's build are not in the audit log:\n%s", tail(r.Stdout, 2000))
	}
}

// Everything kiln writes in its data dir is the owner's only: the
// database and its WAL files, registry content, uploaded contexts, keys
// and certificates; also after an older kiln left the data dir 0755 and
// the database 0644.
func TestDataDirOwnerOnly(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	proj := s.createProject(t, "files")
	s.oci(t, s.Token).pushImage(proj+"/app", "v1", "content")
	s.upload(t, s.Token, projectRef(proj), contextArchive(t, map[string]string{"Dockerfile": "FROM scratch\n"}), true)
	if _, err := s.loginAPI().StartLogin(t.Context(), connect.NewRequest(&cliv1beta1.StartLoginRequest{})); err != nil {
		t.Fatal(err)
	}
	check := func(when string) {
		t.Helper()
		if fi, _ := os.Stat(s.Data); fi.Mode().Perm() != 0o700 {
			t.Errorf("%s: the data dir is %v", when, fi.Mode().Perm())
		}
		seen := map[string]bool{}
		filepath.WalkDir(s.Data, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return nil // removed while walking
			}
			rel, _ := filepath.Rel(s.Data, p)
			top, _, _ := strings.Cut(rel, string(filepath.Separator))
			// Builders' state is buildkitd's (image files keep their
			// modes), behind builders/ (0700); scratch contexts likewise.
			if d.IsDir() && (top == "builders" || top == "work") && rel != top {
				return fs.SkipDir
			}
			fi, err := d.Info()
			if err != nil {
				return nil
			}
			seen[top] = true
			if fi.Mode().Perm()&0o077 != 0 {
				t.Errorf("%s: %s is mode %v", when, rel, fi.Mode().Perm())
			}
			return nil
		})
		for _, want := range []string{"kiln.db", "kiln.db-wal", "admin.token", "registry", "blobs", "pki", "builders"} {
			if !seen[want] {
				t.Errorf("%s: no %s in the data dir (the walk checked %v)", when, want, seen)
			}
		}
	}
	check("running")

	s.stop(t)
	os.Chmod(s.Data, 0o755)
	os.Chmod(filepath.Join(s.Data, "kiln.db"), 0o644)
	s.start(t)
	check("restarted over a 0755 data dir")
}

func projectRef(id string) *kilnv1.ProjectRef {
	return &kilnv1.ProjectRef{Ref: &kilnv1.ProjectRef_ProjectId{ProjectId: id}}
}
