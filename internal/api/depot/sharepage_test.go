package depot

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "buf.build/gen/go/depot/api/protocolbuffers/go/depot/core/v1"
	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/build"
	"github.com/kiln-dev/kiln/internal/builder"
	"github.com/kiln-dev/kiln/internal/project"
	"github.com/kiln-dev/kiln/internal/store"
)

type nopFleet struct{}

func (nopFleet) Ensure(builder.Spec) (builder.Endpoint, bool, error) {
	return builder.Endpoint{}, true, nil
}
func (nopFleet) Lease(string, string, string)   {}
func (nopFleet) Release(string, string, string) {}

type nopCerts struct{}

func (nopCerts) IssueClient(string, string, time.Duration) ([]byte, []byte, error) {
	return nil, nil, nil
}

func shareFixture(t *testing.T) (*build.Service, store.Store, auth.Principal) {
	t.Helper()
	ctx := context.Background()
	st, err := store.OpenSQLite(ctx, filepath.Join(t.TempDir(), "db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	now := time.Now().UTC().Add(-time.Minute)
	st.CreateOrganization(ctx, project.Organization{ID: "o", Name: "o", CreatedAt: now})
	st.CreateProject(ctx, project.Project{ID: "pa", OrgID: "o", Name: "secret-project-name", CreatedAt: now})
	st.CreateBuild(ctx, build.Build{ID: "b1", ProjectID: "pa", OrgID: "o", Status: build.Failed, Error: `<img src=x onerror=alert(1)>`,
		CreatedAt: now, StartedAt: now, FinishedAt: now.Add(2 * time.Second)})
	st.PutSteps(ctx, "b1", []build.Step{
		{Digest: "d1", Name: `[1/2] RUN echo "<script>alert(1)</script>"`, StartedAt: now, CompletedAt: now.Add(time.Second)},
		{Digest: "d2", Name: "[2/2] RUN exit 3", StartedAt: now, CompletedAt: now.Add(time.Second), Error: "exit code: 3"},
	})
	st.AppendLogs(ctx, "b1", []build.LogLine{{Digest: "d1", At: now, Message: "LOG-LINE-NOT-SHARED"}})
	svc := build.NewService(st, nopFleet{}, nopCerts{}, build.Config{}, slog.New(slog.DiscardHandler))
	return svc, st, auth.Principal{TokenID: "t", Kind: auth.TokenOrg, OrgID: "o"}
}

func TestSharePage(t *testing.T) {
	svc, _, org := shareFixture(t)
	mux := http.NewServeMux()
	page := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusTeapot)
		w.Write([]byte("page of " + r.PathValue("token")))
	})
	mux.Handle("GET /shared/{token}", &SharePage{Builds: svc, Page: page, Logger: slog.New(slog.DiscardHandler)})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	url, err := svc.Share(context.Background(), org, "b1")
	if err != nil || !strings.HasPrefix(url, "/shared/") {
		t.Fatalf("Share = %q, %v", url, err)
	}

	// A browser's request is the page's (the dashboard's, in the server).
	res, err := http.Get(srv.URL + url)
	if err != nil {
		t.Fatal(err)
	}
	if body := readAll(t, res); res.StatusCode != http.StatusTeapot || body != "page of "+strings.TrimPrefix(url, "/shared/") {
		t.Fatalf("GET share page = %d %q, want the Page handler's", res.StatusCode, body)
	}
	// Without a page, JSON for everyone; never the log or the project.
	bareMux := http.NewServeMux()
	bareMux.Handle("GET /shared/{token}", &SharePage{Builds: svc, Logger: slog.New(slog.DiscardHandler)})
	bare := httptest.NewServer(bareMux)
	defer bare.Close()
	res, err = http.Get(bare.URL + url)
	if err != nil {
		t.Fatal(err)
	}
	body := readAll(t, res)
	if res.StatusCode != 200 || res.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("GET share link without a page: %d %s", res.StatusCode, res.Header.Get("Content-Type"))
	}
	for _, h := range []string{"Content-Security-Policy", "Referrer-Policy", "X-Content-Type-Options", "Cache-Control"} {
		if res.Header.Get(h) == "" {
			t.Errorf("share link lacks %s", h)
		}
	}
	for _, want := range []string{"b1", "failed", "exit code: 3"} {
		if !strings.Contains(body, want) {
			t.Errorf("share link lacks %q", want)
		}
	}
	for _, secret := range []string{"LOG-LINE-NOT-SHARED", "secret-project-name"} {
		if strings.Contains(body, secret) {
			t.Errorf("share link shows %q", secret)
		}
	}

	req, _ := http.NewRequest("GET", srv.URL+url, nil)
	req.Header.Set("Accept", "application/json")
	res, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var v sharedView
	if err := json.Unmarshal([]byte(readAll(t, res)), &v); err != nil {
		t.Fatal(err)
	}
	if v.BuildID != "b1" || v.Status != "failed" || v.TotalSteps != 2 || v.BuildDurationSeconds != 2 || len(v.Steps) != 2 || v.Steps[1].Error != "exit code: 3" {
		t.Errorf("JSON view = %+v", v)
	}

	for _, path := range []string{"/shared/", "/shared/short", "/shared/" + strings.Repeat("a", 32), "/shared/" + strings.Repeat("%2e", 32),
		"/shared/" + strings.Repeat("a", 31) + "%00", "/shared/" + strings.Repeat("x", 5000)} {
		res, err := http.Get(bare.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		readAll(t, res)
		if res.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s = %d, want 404", path[:min(len(path), 60)], res.StatusCode)
		}
	}
}

func readAll(t *testing.T, res *http.Response) string {
	t.Helper()
	defer res.Body.Close()
	var sb strings.Builder
	buf := make([]byte, 32<<10)
	for {
		n, err := res.Body.Read(buf)
		sb.Write(buf[:n])
		if err != nil {
			break
		}
	}
	return sb.String()
}

// Timestamps cross the trust boundary as protobuf messages: out-of-range
// seconds or nanos must be refused, not wrapped around.
func TestUsageRejectsBadPeriods(t *testing.T) {
	svc, st, org := shareFixture(t)
	u := &UsageService{Projects: &project.Service{Store: st}, Builds: svc, Logger: slog.New(slog.DiscardHandler)}
	ctx := auth.WithPrincipal(context.Background(), org)
	now := time.Now()
	for name, c := range map[string]struct{ start, end *timestamppb.Timestamp }{
		"nanos out of range": {&timestamppb.Timestamp{Seconds: 1, Nanos: 2e9}, nil},
		"year 10000":         {nil, &timestamppb.Timestamp{Seconds: 253402300800}},
		"before year 1":      {&timestamppb.Timestamp{Seconds: -62135596801}, nil},
		"end before start":   {timestamppb.New(now), timestamppb.New(now.Add(-time.Hour))},
		"empty period":       {timestamppb.New(now), timestamppb.New(now)},
	} {
		_, err := u.GetProjectUsage(ctx, connect.NewRequest(&corev1.GetProjectUsageRequest{ProjectId: "pa", StartAt: c.start, EndAt: c.end}))
		if connect.CodeOf(err) != connect.CodeInvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
	}
	page := "x"
	if _, err := u.ListProjectUsage(ctx, connect.NewRequest(&corev1.ListProjectUsageRequest{PageToken: &page})); connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Errorf("bad page token: %v", err)
	}
	res, err := u.GetUsage(ctx, connect.NewRequest(&corev1.GetUsageRequest{StartAt: timestamppb.New(now.Add(-time.Hour))}))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Msg.ContainerBuild) != 1 || res.Msg.ContainerBuild[0].BuildCount != 1 || len(res.Msg.GithubActionsJobs) != 0 || len(res.Msg.Storage) != 1 {
		t.Errorf("GetUsage = %+v", res.Msg)
	}
}
