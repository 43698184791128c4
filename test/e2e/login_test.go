package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"buf.build/gen/go/depot/api/connectrpc/go/depot/core/v1/corev1connect"
	corev1 "buf.build/gen/go/depot/api/protocolbuffers/go/depot/core/v1"
	"connectrpc.com/connect"

	cliv1beta1 "github.com/kiln-dev/kiln/gen/depot/cli/v1beta1"
	"github.com/kiln-dev/kiln/gen/depot/cli/v1beta1/cliv1beta1connect"
)

// loginEnv is a user's environment with no token anywhere: a fresh HOME and
// config dir, no KILN_/DEPOT_ token, the server's URL.
func loginEnv(s *server, home string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "HOME", "XDG_CONFIG_HOME", "KILN_TOKEN", "DEPOT_TOKEN", "KILN_API_URL", "DEPOT_API_URL", "KILN_PROJECT_ID", "DEPOT_PROJECT_ID":
			continue
		}
		env = append(env, kv)
	}
	return append(env, "HOME="+home, "XDG_CONFIG_HOME="+filepath.Join(home, ".config"), "KILN_API_URL="+s.URL)
}

// runAs runs the CLI in env (nothing of the harness's token added).
func runAs(t *testing.T, env []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, kilnBin, args...)
	cmd.Dir, cmd.Env = t.TempDir(), env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	err := cmd.Run()
	return result{Stdout: out.String(), Stderr: errb.String(), Err: err, Took: time.Since(start)}
}

func (s *server) loginAPI() cliv1beta1connect.LoginServiceClient {
	return cliv1beta1connect.NewLoginServiceClient(http.DefaultClient, s.URL)
}

// finishLogin collects a login's token through the generated client.
func (s *server) finishLogin(ctx context.Context, id string) (string, error) {
	stream, err := s.loginAPI().FinishLogin(ctx, connect.NewRequest(&cliv1beta1.FinishLoginRequest{Id: id}))
	if err != nil {
		return "", err
	}
	defer stream.Close()
	token := ""
	for stream.Receive() {
		token += stream.Msg().Token
	}
	return token, stream.Err()
}

func codeOf(err error) connect.Code { return connect.CodeOf(err) }

// A user with no token runs `kiln login`, an administrator approves it
// from their terminal, the user's later commands work with the saved
// token; deleting that token stops it on the very next request.
func TestDeviceLoginThroughCLI(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	proj := s.createProject(t, "device-login")
	home := t.TempDir()
	env := loginEnv(s, home)

	if r := runAs(t, env, "projects", "list"); r.Err == nil {
		t.Fatalf("projects list worked with no token anywhere:\n%s", r.Stdout)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	login := exec.CommandContext(ctx, kilnBin, "login")
	login.Dir, login.Env = t.TempDir(), env
	var stdout bytes.Buffer
	login.Stdout = &stdout
	stderr, err := login.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := login.Start(); err != nil {
		t.Fatal(err)
	}
	// Read the approval hint from the waiting process's stderr.
	var printed strings.Builder
	approveRe := regexp.MustCompile(`kiln login --approve ([a-z0-9]+)`)
	codeRe := regexp.MustCompile(`Login code: ([A-Z0-9]{4}-[A-Z0-9]{4})`)
	urlRe := regexp.MustCompile(`(http://\S+/login/[a-z0-9]+)`)
	approvalID := ""
	sc := bufio.NewScanner(stderr)
	for approvalID == "" && sc.Scan() {
		printed.WriteString(sc.Text() + "\n")
		if m := approveRe.FindStringSubmatch(sc.Text()); m != nil {
			approvalID = m[1]
		}
	}
	if approvalID == "" {
		login.Process.Kill()
		login.Wait()
		t.Fatalf("kiln login printed no `kiln login --approve ID`:\n%s", printed.String())
	}
	rest := make(chan string, 1)
	go func() { b, _ := io.ReadAll(stderr); rest <- string(b) }()
	code, approveURL := codeRe.FindStringSubmatch(printed.String()), urlRe.FindStringSubmatch(printed.String())
	if code == nil || approveURL == nil || approveURL[1] != s.URL+"/login/"+approvalID {
		t.Errorf("kiln login output lacks the code or the approve URL %s/login/%s:\n%s", s.URL, approvalID, printed.String())
	}

	// The login waits: nothing is saved before approval.
	time.Sleep(300 * time.Millisecond)
	if _, err := os.Stat(filepath.Join(home, ".config", "kiln", "config.json")); err == nil {
		t.Errorf("a login was saved before approval")
	}

	// A project token may not approve; the administrator may.
	prjTok, err := corev1connect.NewProjectServiceClient(http.DefaultClient, s.URL).CreateToken(ctx,
		bearer(&corev1.CreateTokenRequest{ProjectId: proj, Description: "ci"}, s.Token))
	if err != nil {
		t.Fatal(err)
	}
	if r := s.kiln(t, t.TempDir(), []string{"KILN_TOKEN=" + prjTok.Msg.Secret}, "login", "--approve", approvalID); r.Err == nil || !strings.Contains(r.Stderr, "organization token") {
		t.Errorf("a project token approved a login: %v\n%s%s", r.Err, r.Stdout, r.Stderr)
	}
	approved := s.mustKiln(t, t.TempDir(), "login", "--approve", approvalID)
	if code != nil && !strings.Contains(approved.Stdout, code[1]) {
		t.Errorf("approve output does not name code %s:\n%s", code[1], approved.Stdout)
	}
	m := regexp.MustCompile(`organization token (tok_[a-z0-9]+)`).FindStringSubmatch(approved.Stdout)
	if m == nil {
		t.Fatalf("approve output names no token id:\n%s", approved.Stdout)
	}
	tokenID := m[1]

	waited := make(chan error, 1)
	go func() { waited <- login.Wait() }()
	select {
	case err := <-waited:
		if err != nil {
			t.Fatalf("kiln login after approval: %v\nstderr:\n%s%s", err, printed.String(), <-rest)
		}
	case <-time.After(30 * time.Second):
		login.Process.Kill()
		t.Fatalf("kiln login still waiting 30s after approval:\n%s", printed.String())
	}
	<-rest
	if !strings.Contains(stdout.String(), "logged in to "+s.URL) {
		t.Errorf("kiln login stdout: %q", stdout.String())
	}
	if r := s.kiln(t, t.TempDir(), nil, "login", "--approve", approvalID); r.Err == nil || !strings.Contains(r.Stderr, "already") {
		t.Errorf("second approval: %v %s", r.Err, r.Stderr)
	}

	// The saved login works with no token in the environment.
	b, err := os.ReadFile(filepath.Join(home, ".config", "kiln", "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	var saved struct{ APIURL, Token string }
	json.Unmarshal(b, &saved)
	if !strings.HasPrefix(saved.Token, "kiln_org_") {
		t.Fatalf("saved login has no organization token: %s", b)
	}
	if fi, _ := os.Stat(filepath.Join(home, ".config", "kiln", "config.json")); fi.Mode().Perm() != 0o600 {
		t.Errorf("login file mode %v, want 0600", fi.Mode().Perm())
	}
	if r := runAs(t, env, "projects", "list"); r.Err != nil || !strings.Contains(r.Stdout, proj) {
		t.Fatalf("projects list with the saved login: %v\n%s%s", r.Err, r.Stdout, r.Stderr)
	}
	if b, _ := os.ReadFile(s.log); bytes.Contains(b, []byte(saved.Token)) {
		t.Errorf("the minted token appears in the server log")
	}

	// Deleting the token (depot.core.v1 DeleteToken, by the id the approval
	// named) stops it on the very next request.
	core := corev1connect.NewProjectServiceClient(http.DefaultClient, s.URL)
	if _, err := core.DeleteToken(ctx, bearer(&corev1.DeleteTokenRequest{TokenId: tokenID}, s.Token)); err != nil {
		t.Fatalf("DeleteToken(%s): %v", tokenID, err)
	}
	_, err = core.ListProjects(ctx, bearer(&corev1.ListProjectsRequest{}, saved.Token))
	if codeOf(err) != connect.CodeUnauthenticated {
		t.Errorf("ListProjects with the deleted token: %v, want Unauthenticated", err)
	}
	if r := runAs(t, env, "projects", "list"); r.Err == nil || !strings.Contains(r.Stderr, "invalid or expired token") {
		t.Errorf("projects list with the deleted saved token: %v\n%s", r.Err, r.Stderr)
	}
}

// The login protocol's edges through depot.cli.v1beta1's generated client:
// no token needed to start, unknown ids, denial, a login finished once.
func TestDeviceLoginProtocol(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	api := s.loginAPI()

	_, err := s.finishLogin(ctx, "nosuchlogin")
	if codeOf(err) != connect.CodeNotFound {
		t.Errorf("FinishLogin(unknown): %v, want NotFound", err)
	}
	_, err = s.finishLogin(ctx, strings.Repeat("a", 32))
	if codeOf(err) != connect.CodeNotFound {
		t.Errorf("FinishLogin(well-formed unknown): %v, want NotFound", err)
	}

	// Denied: the waiting client hears PermissionDenied.
	started, err := api.StartLogin(ctx, connect.NewRequest(&cliv1beta1.StartLoginRequest{}))
	if err != nil {
		t.Fatalf("StartLogin with no token: %v", err)
	}
	if len(started.Msg.Id) < 22 || !strings.HasPrefix(started.Msg.ApproveUrl, s.URL+"/login/") || strings.Contains(started.Msg.ApproveUrl, started.Msg.Id) {
		t.Errorf("StartLogin = %+v (the approve URL must not carry the id that collects the token)", started.Msg)
	}
	approval := started.Msg.ApproveUrl[strings.LastIndex(started.Msg.ApproveUrl, "/")+1:]
	denied := make(chan error, 1)
	go func() { _, err := s.finishLogin(ctx, started.Msg.Id); denied <- err }()
	time.Sleep(200 * time.Millisecond)
	if r := s.mustKiln(t, t.TempDir(), "login", "--deny", started.Msg.ApproveUrl); !strings.Contains(r.Stdout, "denied") {
		t.Errorf("login --deny: %s", r.Stdout)
	}
	select {
	case err := <-denied:
		if codeOf(err) != connect.CodePermissionDenied {
			t.Errorf("FinishLogin of a denied login: %v, want PermissionDenied", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("FinishLogin did not end after the denial")
	}
	if r := s.kiln(t, t.TempDir(), nil, "login", "--approve", approval); r.Err == nil {
		t.Errorf("approved a denied login")
	}

	// Approved: the token is handed out once.
	started, _ = api.StartLogin(ctx, connect.NewRequest(&cliv1beta1.StartLoginRequest{}))
	s.mustKiln(t, t.TempDir(), "login", "--approve", started.Msg.ApproveUrl)
	tok, err := s.finishLogin(ctx, started.Msg.Id)
	if err != nil || !strings.HasPrefix(tok, "kiln_org_") {
		t.Fatalf("FinishLogin after approval: %q, %v", tok, err)
	}
	if _, err := s.finishLogin(ctx, started.Msg.Id); codeOf(err) != connect.CodeFailedPrecondition {
		t.Errorf("second FinishLogin: %v, want FailedPrecondition", err)
	}
}

// The approval page: shows the code, escapes everything, refuses bad
// tokens and cross-origin posts, approves with an organization token.
func TestLoginApprovalPage(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	started, err := s.loginAPI().StartLogin(ctx, connect.NewRequest(&cliv1beta1.StartLoginRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	pageURL := started.Msg.ApproveUrl
	approval := pageURL[strings.LastIndex(pageURL, "/")+1:]
	code := strings.ToUpper(approval[:4] + "-" + approval[4:8])

	get := func(u string) (int, string, http.Header) {
		t.Helper()
		res, err := http.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(b), res.Header
	}
	status, body, h := get(pageURL)
	if status != 200 || !strings.Contains(body, code) || !strings.Contains(body, "kiln login --approve "+approval) || !strings.Contains(body, `<form method="post"`) {
		t.Errorf("approval page: %d\n%s", status, body)
	}
	if !strings.Contains(h.Get("Content-Security-Policy"), "frame-ancestors 'none'") || h.Get("X-Frame-Options") != "DENY" || !strings.HasPrefix(h.Get("Content-Type"), "text/html") {
		t.Errorf("approval page headers: %v", h)
	}
	if strings.Contains(body, started.Msg.Id) {
		t.Errorf("the approval page shows the id that collects the token")
	}

	// Hostile and unknown ids: 404 (or no route), never reflected.
	for _, p := range []string{
		"/login/" + url.PathEscape("<script>alert(1)</script>"),
		"/login/%22%3E%3Cimg%20src=x%20onerror=alert(1)%3E",
		"/login/" + strings.Repeat("z", 26),
		"/login/" + strings.Repeat("A", 5000),
		"/login/..%2f..%2fetc%2fpasswd",
		"/login/" + started.Msg.Id,
	} {
		status, body, _ := get(s.URL + p)
		if status != http.StatusNotFound {
			t.Errorf("GET %.60s: %d, want 404", p, status)
		}
		if strings.Contains(body, "<script>alert") || strings.Contains(body, "onerror=") || strings.Contains(body, "AAAAAAAAAA") {
			t.Errorf("GET %.60s reflects the id:\n%s", p, body)
		}
	}

	post := func(token, decision string, hdr map[string]string) (int, string) {
		t.Helper()
		form := url.Values{"token": {token}, "decision": {decision}}
		req, _ := http.NewRequest("POST", pageURL, strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(b)
	}
	const wrong = "kiln_org_<b>notarealtoken</b>"
	if status, body := post(wrong, "approve", nil); status != http.StatusUnauthorized || strings.Contains(body, "notarealtoken") {
		t.Errorf("POST with a wrong token: %d (the token must not be reflected)\n%s", status, body)
	}
	// A cross-site form post is refused even with a valid token.
	if status, _ := post(s.Token, "approve", map[string]string{"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}); status != http.StatusForbidden {
		t.Errorf("cross-site POST: %d, want 403", status)
	}
	if _, body, _ := get(pageURL); !strings.Contains(body, `<form method="post"`) {
		t.Errorf("login no longer pending after refused posts")
	}
	if status, body := post(s.Token, "approve", map[string]string{"Origin": s.URL, "Sec-Fetch-Site": "same-origin"}); status != 200 || !strings.Contains(body, "Approved") || strings.Contains(body, s.Token) {
		t.Errorf("same-origin POST with the admin token: %d\n%s", status, body)
	}
	tok, err := s.finishLogin(ctx, started.Msg.Id)
	if err != nil || !strings.HasPrefix(tok, "kiln_org_") {
		t.Errorf("FinishLogin after approval on the page: %q, %v", tok, err)
	}
	if status, body := post(s.Token, "deny", nil); status != http.StatusConflict || strings.Contains(body, "<form") {
		t.Errorf("POST on a finished login: %d\n%s", status, body)
	}
	if b, _ := os.ReadFile(s.log); bytes.Contains(b, []byte("notarealtoken")) {
		t.Errorf("a submitted token reached the server log")
	}
}
