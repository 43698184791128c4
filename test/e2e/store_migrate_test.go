package e2e

import (
	"net/http"
	"strings"
	"testing"

	"buf.build/gen/go/depot/api/connectrpc/go/depot/core/v1/corev1connect"
	corev1 "buf.build/gen/go/depot/api/protocolbuffers/go/depot/core/v1"

	"github.com/kiln-dev/kiln/internal/store/pgtest"
)

// An operator outgrows SQLite: a populated single-machine install is
// moved to a real Postgres with `kiln store migrate`, and kiln serve on
// Postgres has everything — the build and its steps, the project token,
// the saved image, the trust policy — and builds again.
func TestStoreMigrateToPostgres(t *testing.T) {
	t.Parallel()
	pg := pgtest.NewDatabase(t)
	s := startServer(t)
	proj := s.createProject(t, "migrate")
	token := s.projectToken(t, proj)
	dir := writeContext(t, map[string]string{"Dockerfile": "FROM scratch\nCOPY Dockerfile /\n"})
	r := s.mustKiln(t, dir, "build", "--project", proj, "--progress", "plain", "--save", "--save-tag", "v1", ".")
	buildID := buildIDOf(t, r)
	policy := lifeTrust(t, s, proj, "acme", "app")

	s.stop(t)
	out := s.mustKiln(t, t.TempDir(), "store", "migrate", "--from", "sqlite:"+s.Data, "--to", pg)
	t.Logf("kiln store migrate:\n%s%s", out.Stdout, out.Stderr)
	if strings.Contains(out.Stdout+out.Stderr, "host=") && strings.Contains(out.Stdout+out.Stderr, "password") {
		t.Errorf("migrate printed connection details:\n%s%s", out.Stdout, out.Stderr)
	}
	// A second run refuses: the target is no longer empty.
	if again := s.kiln(t, t.TempDir(), nil, "store", "migrate", "--from", "sqlite:"+s.Data, "--to", pg); again.Err == nil {
		t.Errorf("a second migrate into the same database succeeded:\n%s", again.Stderr)
	}

	s.args = append([]string{"--store", pg}, s.args...)
	s.start(t)

	// The build, as the project's own token sees it.
	got := s.mustKiln(t, t.TempDir(), "builds", "get", buildID)
	if !strings.Contains(got.Stdout, buildID) || !strings.Contains(strings.ToLower(got.Stdout), "succeeded") {
		t.Errorf("kiln builds get %s after the move:\n%s", buildID, got.Stdout)
	}
	// The project token still authenticates (and only for its project).
	_, body := s.oci(t, token).expect(200, "GET", "/v2/"+proj+"/tags/list", nil)
	if !strings.Contains(string(body), `"v1"`) {
		t.Errorf("the saved image's tags after the move: %s", body)
	}
	// The trust policy.
	core := corev1connect.NewProjectServiceClient(http.DefaultClient, s.URL)
	pols, err := core.ListTrustPolicies(t.Context(), bearer(&corev1.ListTrustPoliciesRequest{ProjectId: proj}, s.Token))
	if err != nil || len(pols.Msg.TrustPolicies) != 1 || pols.Msg.TrustPolicies[0].GetTrustPolicyId() != policy {
		t.Errorf("trust policies after the move: %v %v; want %s", pols, err, policy)
	}
	// And a new build, cached from the builder the move did not touch.
	r = s.mustKiln(t, dir, "build", "--project", proj, "--progress", "plain", ".")
	if !strings.Contains(r.Stderr, "CACHED") {
		t.Errorf("the rebuild after the move was not cached:\n%s", tail(r.Stderr, 3000))
	}
}
