package cli

import (
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

// TestNoServerImports keeps the client commands free of server code
// (DESIGN.md: the CLI never imports the server): `kiln serve` is wired in
// cmd/kiln, and what both sides need lives in small packages such as
// internal/cliflag and internal/retention.
func TestNoServerImports(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list")
	}
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	server := regexp.MustCompile(`^github\.com/kiln-dev/kiln/internal/(server|registry|auth|store|builder|gateway|runner|build|project|login|audit|blob|api)(/|$)`)
	for _, p := range strings.Fields(string(out)) {
		if server.MatchString(p) {
			t.Errorf("internal/cli depends on %s, server code", p)
		}
	}
}
