package e2e

// Faults of kiln's own disks and of what is uploaded to them: the data disk
// filling up (the database, contexts and builders' state live on it), and
// uploads that are too big, corrupted or cut off (RELIABILITY.md rows 3
// and 5).

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	cliv1 "github.com/depot/depot-go/proto/depot/cli/v1"
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

// diskNoServerPath fails the test if what a client was shown names a path
// of the server (RELIABILITY row 10): its data directory or anything in it.
func diskNoServerPath(t *testing.T, s *server, what, shown string) {
	t.Helper()
	if strings.Contains(shown, s.Data) || strings.Contains(shown, "kiln.db") {
		t.Errorf("%s shows a server path:\n%s", what, shown)
	}
}

// When kiln's data disk fills up, a build that ends meanwhile is not left
// running: its end is kept and written as soon as there is room again.
// Users are told the disk is full (not "internal error"), /readyz says so,
// and the moment space is freed readiness returns and new builds work.
func TestDataDiskFull(t *testing.T) {
	t.Parallel()
	s := startServerOnDisk(t, 256<<20)
	proj := s.createProject(t, "full-disk")
	ctxDir := writeContext(t, map[string]string{"Dockerfile": baseStages + "FROM busybox\nRUN echo fine > /fine\n"})
	s.mustKiln(t, ctxDir, "build", "--project", proj, "--progress", "plain", ".")
	if code, body := diskReadyz(t, s); code != http.StatusOK {
		t.Fatalf("/readyz before the disk filled: %d %s", code, body)
	}

	// A client build holds its builder when the disk fills, then ends.
	id, tok := s.createBuild(t, proj, s.Token)
	s.activeConnection(t, id, tok)
	free := fillDisk(t, s.Data)
	t.Logf("disk filled: %d bytes free", freeBytes(t, s.Data))
	_, err := s.api().FinishBuild(t.Context(), bearer(&cliv1.FinishBuildRequest{BuildId: id,
		Result: &cliv1.FinishBuildRequest_Success{Success: &cliv1.FinishBuildRequest_BuildSuccess{}}}, tok))
	if err != nil {
		t.Errorf("FinishBuild on a full disk: %v; want its outcome kept until it can be written", err)
		diskNoServerPath(t, s, "FinishBuild", err.Error())
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
	diskNoServerPath(t, s, "kiln build on a full disk", r.Stderr)
	t.Logf("kiln build on a full disk:\n%s", tail(r.Stderr, 400))
	code, body := diskReadyz(t, s)
	t.Logf("/readyz on a full disk: %d %s", code, body)
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "data disk is full") {
		t.Errorf("/readyz on a full disk: %d %q; want 503 saying the data disk is full", code, body)
	}
	diskNoServerPath(t, s, "/readyz", body)

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
