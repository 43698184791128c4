package web_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/internal/testenv"
)

// A step's history is looked up by its name, which the tenant chooses: a
// name like "constructor" or "__proto__" must find no inherited property
// (which stopped the page drawing). app.js keeps it in a Map; with node at
// hand the lookup is run.
func TestStepHistoryLookupIsNotAnObjectIndex(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("assets", "app.js"))
	if err != nil {
		t.Fatal(err)
	}
	js := string(raw)
	if strings.Contains(js, "history[") || !strings.Contains(js, "history.get(s.name)") ||
		!strings.Contains(js, "history = new Map(Object.entries(v.history))") {
		t.Fatal("app.js indexes the step history as a plain object")
	}
	node, err := exec.LookPath("node")
	if err != nil {
		testenv.Missing(t, "node is needed to run app.js's step-history lookup: apt-get install nodejs, or run hack/setup.sh --tests")
	}
	script := `const v = JSON.parse('{"history":{"x":[{"ms":1}]}}');
let history = new Map(Object.entries(v.history));
for (const name of ["constructor", "hasOwnProperty", "__proto__", "toString"]) {
  const runs = history.get(name) || [];
  if (!Array.isArray(runs) || runs.length !== 0) { console.log("bad " + name); process.exit(1); }
}
if (history.get("x").length !== 1) process.exit(1);`
	if out, err := exec.Command(node, "-e", script).CombinedOutput(); err != nil {
		t.Fatalf("node: %v %s", err, out)
	}
}
