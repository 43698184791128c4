package depot

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/errdefs"
)

type refuseAll struct{}

func (refuseAll) Authenticate(context.Context, string) (auth.Principal, error) {
	return auth.Principal{}, errdefs.ErrUnauthenticated
}

// GET /builds/{id} is the dashboard's page for a browser and JSON for
// everyone else: API callers keep what they had.
func TestBuildPageNegotiates(t *testing.T) {
	html := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(299) })
	h := &BuildPage{Authn: refuseAll{}, Logger: slog.New(slog.DiscardHandler), HTML: html}
	mux := http.NewServeMux()
	mux.Handle("GET /builds/{id}", h)
	for _, tc := range []struct {
		accept, authz string
		want          int
	}{
		{"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", "", 299}, // a browser
		{"text/html", "", 299},
		{"application/json", "", 401},
		{"application/json, text/html", "", 401},
		{"text/html", "Bearer kiln_prj_x", 401}, // an API caller that says html
		{"", "", 401},
		{"*/*", "", 401}, // curl
	} {
		req := httptest.NewRequest("GET", "/builds/b1", nil)
		if tc.accept != "" {
			req.Header.Set("Accept", tc.accept)
		}
		if tc.authz != "" {
			req.Header.Set("Authorization", tc.authz)
		}
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, req)
		if rec.Code != tc.want {
			t.Errorf("Accept %q, Authorization %q: %d, want %d", tc.accept, tc.authz, rec.Code, tc.want)
		}
		if rec.Header().Get("Vary") == "" {
			t.Errorf("Accept %q: no Vary header", tc.accept)
		}
	}
}
