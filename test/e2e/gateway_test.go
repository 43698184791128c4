package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	cliv1 "github.com/depot/depot-go/proto/depot/cli/v1"
	bkclient "github.com/moby/buildkit/client"
	"github.com/moby/buildkit/client/llb"

	"github.com/kiln-dev/kiln/internal/blob/s3test"
	"github.com/kiln-dev/kiln/internal/engine"
)

// gatewayConn is a BuildKit client through kiln's builder gateway with a
// build's own credentials, as the depot CLI makes it.
func gatewayConn(t *testing.T, ctx context.Context, conn *cliv1.GetBuildKitConnectionResponse_ActiveConnection) (*bkclient.Client, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	return engine.Dial(ctx, engine.Connection{Endpoint: conn.Endpoint, ServerName: conn.ServerName,
		CertPEM: conn.Cert.Cert, KeyPEM: conn.Cert.Key, CACertPEM: conn.CaCert.Cert})
}

// listWorkers is one round trip on c, bounded.
func listWorkers(ctx context.Context, c *bkclient.Client) error {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	_, err := c.ListWorkers(ctx)
	return err
}

// An attacker who kept a build's credentials after the build ended, or
// after the token that made it was deleted, reaches nothing: the gateway
// cuts the open connection at once and refuses new ones, and the build
// token is dead.
func TestGatewayRevokesEndedBuilds(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	ctx := t.Context()
	proj := s.createProject(t, "revoke")
	api := s.api()

	// 1. FinishBuild: the open connection is cut, a new one refused, the
	// build token refused everywhere (API and registry).
	id, tok := s.createBuild(t, proj, s.Token)
	conn := s.activeConnection(t, id, tok)
	if !strings.HasPrefix(conn.Endpoint, "tcp://"+s.addr) {
		t.Errorf("endpoint %s is not kiln's gateway at %s", conn.Endpoint, s.addr)
	}
	c, err := gatewayConn(t, ctx, conn)
	if err != nil {
		t.Fatalf("control: the build's own certificate refused while it runs: %v", err)
	}
	defer c.Close()
	if _, err := api.FinishBuild(ctx, bearer(&cliv1.FinishBuildRequest{BuildId: id,
		Result: &cliv1.FinishBuildRequest_Success{Success: &cliv1.FinishBuildRequest_BuildSuccess{}}}, tok)); err != nil {
		t.Fatalf("FinishBuild: %v", err)
	}
	if err := listWorkers(ctx, c); err == nil {
		t.Errorf("a connection opened during the build still reaches the builder after FinishBuild")
	}
	if c2, err := gatewayConn(t, ctx, conn); err == nil {
		c2.Close()
		t.Errorf("the build's client certificate opens a new builder connection after FinishBuild")
	}
	_, err = api.GetBuildKitConnection(ctx, bearer(&cliv1.GetBuildKitConnectionRequest{BuildId: id}, tok))
	if connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Errorf("build token after FinishBuild: GetBuildKitConnection = %v, want Unauthenticated", err)
	}
	if code := registryTokenStatus(t, s, tok, proj); code != http.StatusUnauthorized {
		t.Errorf("build token after FinishBuild: registry token endpoint answered %d, want 401", code)
	}

	// 2. Deleting the project token that created a build ends the build
	// and cuts its connection.
	created := s.mustKiln(t, t.TempDir(), "tokens", "create", "--project", proj)
	ptok := strings.TrimSpace(created.Stdout)
	var tokID string
	if f := strings.Fields(created.Stderr); len(f) > 3 && f[0] == "created" {
		tokID = f[3]
	} else {
		t.Fatalf("kiln tokens create said %q", created.Stderr)
	}
	id2, tok2 := s.createBuild(t, proj, ptok)
	conn2 := s.activeConnection(t, id2, tok2)
	c3, err := gatewayConn(t, ctx, conn2)
	if err != nil {
		t.Fatalf("control: %v", err)
	}
	defer c3.Close()
	s.mustKiln(t, t.TempDir(), "tokens", "delete", tokID)
	if err := listWorkers(ctx, c3); err == nil {
		t.Errorf("a build's connection survives the deletion of the token that created it")
	}
	if st := s.buildStatus(t, proj, id2); st != cliv1.BuildStatus_BUILD_STATUS_CANCELED {
		t.Errorf("build of a deleted token is %v, want canceled", st)
	}
	if _, err := api.ReportBuildHealth(ctx, bearer(&cliv1.ReportBuildHealthRequest{BuildId: id2}, tok2)); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Errorf("build token of a deleted token's build: %v, want Unauthenticated", err)
	}
}

// registryTokenStatus asks kiln's registry token endpoint for a pull token
// of proj with a kiln token as basic auth, and returns the HTTP status.
func registryTokenStatus(t *testing.T, s *server, token, proj string) int {
	t.Helper()
	req, _ := http.NewRequest("GET", s.URL+"/v2/token?service=kiln&scope=repository:"+proj+"/app:pull", nil)
	req.SetBasicAuth("x-token", token)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	return res.StatusCode
}

// buildkitd listens on nothing but its unix socket: no TCP port on the
// host reaches a builder around the gateway.
func TestBuildersListenOnNoTCPPort(t *testing.T) {
	t.Parallel()
	s := sharedServer(t)
	proj := s.createProject(t, "nolisten")
	id, tok := s.createBuild(t, proj, s.Token)
	s.activeConnection(t, id, tok)
	var pid int
	for _, b := range s.builders(t) {
		if b.ProjectID == proj {
			pid = b.PID
		}
	}
	if pid == 0 {
		t.Fatal("no builder process")
	}
	listening := listeningTCPInodes(t)
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	for _, fd := range fds {
		l, _ := os.Readlink(filepath.Join(fmt.Sprintf("/proc/%d/fd", pid), fd.Name()))
		if ino, ok := strings.CutPrefix(l, "socket:["); ok && listening[strings.TrimSuffix(ino, "]")] {
			t.Errorf("buildkitd (pid %d) listens on a TCP port (socket inode %s)", pid, ino)
		}
	}
}

// listeningTCPInodes are the inodes of the host's listening TCP sockets.
func listeningTCPInodes(t *testing.T) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(b), "\n")[1:] {
			fields := strings.Fields(l)
			if len(fields) > 9 && fields[3] == "0A" { // TCP_LISTEN
				out[fields[9]] = true
			}
		}
	}
	return out
}

// With kiln's registry in S3 and credentials in kiln's environment
// (AWS_*), a builder has none of them, and a build's certificate cannot
// use BuildKit's S3 cache export to write into kiln's bucket.
func TestBuildersGetNoKilnCredentials(t *testing.T) {
	t.Parallel()
	gw := s3test.Start(t)
	env := []string{"AWS_ACCESS_KEY_ID=" + gw.AccessKey, "AWS_SECRET_ACCESS_KEY=" + gw.SecretKey, "AWS_REGION=" + gw.Region,
		"KILN_SECRET_CANARY=canary"}
	s := startServerEnv(t, env, "--registry-s3-bucket", gw.Bucket, "--registry-s3-endpoint", gw.Endpoint, "--registry-s3-region", gw.Region)
	ctx := t.Context()
	proj := s.createProject(t, "creds")
	id, tok := s.createBuild(t, proj, s.Token)
	conn := s.activeConnection(t, id, tok)

	var pid int
	for _, b := range s.builders(t) {
		if b.ProjectID == proj {
			pid = b.PID
		}
	}
	environ, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range strings.Split(string(environ), "\x00") {
		if kv == "AWS_EC2_METADATA_DISABLED=true" {
			continue // kiln's own: keeps buildkitd from the instance role
		}
		if strings.HasPrefix(kv, "AWS_") || strings.HasPrefix(kv, "KILN_") || strings.Contains(kv, gw.SecretKey) {
			t.Errorf("builder environment holds kiln's %q", strings.SplitN(kv, "=", 2)[0])
		}
	}

	before := bucketFiles(t, gw)
	c, err := gatewayConn(t, ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	def, err := llb.Scratch().File(llb.Mkfile("/pwned", 0o644, []byte("x"))).Marshal(ctx)
	if err != nil {
		t.Fatal(err)
	}
	solveCtx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	_, err = c.Solve(solveCtx, def, bkclient.SolveOpt{CacheExports: []bkclient.CacheOptionsEntry{{Type: "s3", Attrs: map[string]string{
		"bucket": gw.Bucket, "region": gw.Region, "endpoint_url": gw.Endpoint, "use_path_style": "true", "name": "pwned", "mode": "max",
	}}}}, nil)
	if err == nil {
		t.Errorf("a build exported cache into kiln's registry bucket with kiln's credentials")
	} else {
		t.Logf("S3 cache export refused: %v", err)
		if strings.Contains(err.Error(), "request to EC2 IMDS") {
			t.Errorf("buildkitd asked the cloud metadata service for credentials: %v", err)
		}
	}
	for f := range bucketFiles(t, gw) {
		if !before[f] {
			t.Errorf("the build wrote %s into kiln's bucket", f)
		}
	}
}

// bucketFiles lists the objects in the versitygw bucket (its posix backend).
func bucketFiles(t *testing.T, gw *s3test.Server) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	root := filepath.Join(gw.Root, gw.Bucket)
	filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(root, p)
			out[rel] = true
		}
		return nil
	})
	return out
}
