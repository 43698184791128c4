package cli

import (
	"bytes"
	"strings"
	"testing"
)

// A missing argument says what buildx says: what is missing, where the
// help is, the usage line and an example.
func TestMissingArgumentMessage(t *testing.T) {
	for _, args := range [][]string{{"build"}, {"builds", "logs"}, {"projects", "create"}, {"build", "a", "b"}} {
		var out, errb bytes.Buffer
		code := Main(args, &out, &errb)
		got := errb.String()
		if code == 0 || !strings.Contains(got, "requires exactly 1 argument") || !strings.Contains(got, "--help'") ||
			!strings.Contains(got, "Usage:  kiln "+args[0]) || !strings.Contains(got, "Example:\n  kiln ") {
			t.Errorf("kiln %s: exit %d, stderr:\n%s", strings.Join(args, " "), code, got)
		}
	}
	var errb bytes.Buffer
	Main([]string{"build"}, &bytes.Buffer{}, &errb)
	if want := "Usage:  kiln build [OPTIONS] PATH | URL | -\n"; !strings.Contains(errb.String(), want) {
		t.Errorf("kiln build: %q lacks %q", errb.String(), want)
	}
}
