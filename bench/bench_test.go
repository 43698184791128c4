package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/testenv"
)

func TestMain(m *testing.M) {
	// The runner re-executes its own binary as the distribution registry;
	// under go test that binary is this test binary.
	if serveRole() {
		return
	}
	os.Exit(m.Run())
}

// TestSmoke runs the whole benchmark in smoke mode (tiny sizes, one run of
// each series) so the runner cannot rot: every workload must run on both
// sides without error and the report must be written. The numbers are not
// checked: they mean little at these sizes and on a shared machine.
func TestSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the smoke run starts real buildkitd and kiln serve processes")
	}
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	if missing := checkComponents(filepath.Join(root, "bin", "buildkitd"), filepath.Join(root, "bin", "buildctl")); len(missing) > 0 {
		if testenv.SkipMissing() {
			t.Skipf("KILN_SKIP_MISSING=1; missing: %s", strings.Join(missing, ", "))
		}
		t.Fatalf("missing components: %s (run hack/setup.sh, or set KILN_SKIP_MISSING=1 to skip locally)", strings.Join(missing, ", "))
	}
	out := t.TempDir()
	var table, logs bytes.Buffer
	start := time.Now()
	rep, err := Run(t.Context(), config{smoke: true, outDir: out, budget: 110 * time.Second}, &table, &logs)
	t.Logf("smoke run took %s", time.Since(start).Round(time.Millisecond))
	if err != nil {
		t.Fatalf("smoke run: %v\n%s", err, logs.String())
	}
	if len(rep.Errors) > 0 {
		t.Fatalf("smoke run errors:\n%s\nlog:\n%s", strings.Join(rep.Errors, "\n"), logs.String())
	}
	for _, f := range []string{"RESULTS.md", "results.json"} {
		if _, err := os.Stat(filepath.Join(out, f)); err != nil {
			t.Errorf("%s not written: %v", f, err)
		}
	}
	// Every workload produced rows with both sides (kiln's registry side
	// may be pending until kiln has a registry).
	for _, w := range []string{"W1", "W2", "W3", "W4", "W5"} {
		n := 0
		for _, r := range rep.Results {
			if r.Workload != w {
				continue
			}
			n++
			if r.Baseline == nil && w != "W5" || r.Kiln == nil && r.Pending == "" {
				t.Errorf("%s: a side was not measured: %+v", r.Name, r)
			}
		}
		if n == 0 {
			t.Errorf("%s produced no results", w)
		}
	}
	for _, tc := range rep.Targets {
		if tc.Status == "" {
			t.Errorf("target %q has no status", tc.Work)
		}
	}
	if t.Failed() {
		t.Logf("table:\n%s\nlog:\n%s", table.String(), logs.String())
	}
}
