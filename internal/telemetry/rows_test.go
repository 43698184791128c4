package telemetry

import (
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/internal/build"
)

// A build recorded before kinds existed ("") is exported as a client build.
func TestBuildRowKind(t *testing.T) {
	for kind, want := range map[build.Kind]string{"": `"kind":"client"`, build.KindClient: `"kind":"client"`, build.KindSource: `"kind":"source"`} {
		r := newExportRows(build.Build{ID: "b", Kind: kind}, nil, nil, 1).buildRecord()
		if !strings.Contains(string(r.Row), want) {
			t.Errorf("kind %q: row %s lacks %s", kind, r.Row, want)
		}
	}
}
