package auth_test

import (
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/internal/auth"
)

func TestLooksLikeJWT(t *testing.T) {
	for s, want := range map[string]bool{
		"a.b.c":                 true,
		"eyJh.eyJz.sig-_":       true,
		"kiln_prj_abc":          false,
		"a.b":                   false,
		"a.b.c.d":               false,
		"a..c":                  false,
		".b.c":                  false,
		"a.b.":                  false,
		"a b.c.d":               false,
		"a.b.c=":                false,
		"":                      false,
		"kiln_org_x.y.z":        true, // shape only; verification decides
		strings.Repeat("a.", 2): false,
	} {
		if got := auth.LooksLikeJWT(s); got != want {
			t.Errorf("LooksLikeJWT(%q) = %v, want %v", s, got, want)
		}
	}
}
