package server

import (
	"testing"

	"github.com/kiln-dev/kiln/gen/depot/cli/v1beta1/cliv1beta1connect"
)

func TestLoginProceduresArePublic(t *testing.T) {
	for _, p := range []string{cliv1beta1connect.LoginServiceStartLoginProcedure, cliv1beta1connect.LoginServiceFinishLoginProcedure} {
		if !publicProcedures[p] {
			t.Errorf("%s needs no token (the caller has none yet) but is not in publicProcedures", p)
		}
	}
	if publicProcedures[cliv1beta1connect.ProjectsServiceResetProjectCacheProcedure] {
		t.Errorf("ResetProjectCache must not be public")
	}
}

func TestCheckPublicURL(t *testing.T) {
	for in, want := range map[string]string{
		"":                            "",
		"https://kiln.example.com/":   "https://kiln.example.com",
		"http://127.0.0.1:7420":       "http://127.0.0.1:7420",
		"https://example.com/kiln///": "https://example.com/kiln",
	} {
		if got, err := checkPublicURL(in); err != nil || got != want {
			t.Errorf("checkPublicURL(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"kiln.example.com", "ftp://x", "http://", "https://u:p@x", "http://x/?a=1", "http://x/#f", "javascript:alert(1)", "http://x y"} {
		if _, err := checkPublicURL(bad); err == nil {
			t.Errorf("checkPublicURL(%q) accepted", bad)
		}
	}
}
