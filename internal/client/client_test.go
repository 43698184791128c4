package client

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestFindProject(t *testing.T) {
	t.Setenv("KILN_PROJECT_ID", "")
	t.Setenv("DEPOT_PROJECT_ID", "")
	root := t.TempDir()
	deep := filepath.Join(root, "a", "b", "c")
	os.MkdirAll(deep, 0o755)
	if _, err := FindProject("", deep); err == nil || !strings.Contains(err.Error(), "--project") {
		t.Errorf("no project anywhere: %v", err)
	}
	os.WriteFile(filepath.Join(root, "depot.json"), []byte(`{"id":"fromdepot"}`), 0o644)
	if id, _ := FindProject("", deep); id != "fromdepot" {
		t.Errorf("depot.json walking up: %q", id)
	}
	os.WriteFile(filepath.Join(root, "a", "kiln.json"), []byte(`{"id":"fromkiln"}`), 0o644)
	if id, _ := FindProject("", deep); id != "fromkiln" {
		t.Errorf("nearest kiln.json: %q", id)
	}
	t.Setenv("DEPOT_PROJECT_ID", "depotenv")
	if id, _ := FindProject("", deep); id != "depotenv" {
		t.Errorf("DEPOT_PROJECT_ID: %q", id)
	}
	t.Setenv("KILN_PROJECT_ID", "kilnenv")
	if id, _ := FindProject("", deep); id != "kilnenv" {
		t.Errorf("KILN_PROJECT_ID beats DEPOT_PROJECT_ID: %q", id)
	}
	if id, _ := FindProject("flag", deep); id != "flag" {
		t.Errorf("flag beats env: %q", id)
	}
	t.Setenv("KILN_PROJECT_ID", "")
	t.Setenv("DEPOT_PROJECT_ID", "")
	os.WriteFile(filepath.Join(deep, "kiln.json"), []byte(`{not json`), 0o644)
	if _, err := FindProject("", deep); err == nil || !strings.Contains(err.Error(), "kiln.json") {
		t.Errorf("malformed kiln.json: %v", err)
	}
}

func TestResolve(t *testing.T) {
	t.Setenv("HOME", t.TempDir())
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	t.Setenv("KILN_DATA", t.TempDir())
	for _, k := range []string{"KILN_API_URL", "DEPOT_API_URL", "KILN_TOKEN", "DEPOT_TOKEN"} {
		t.Setenv(k, "")
	}
	if _, err := Resolve("", ""); err == nil || !strings.Contains(err.Error(), "no token") {
		t.Errorf("no token anywhere: %v", err)
	}
	os.WriteFile(filepath.Join(os.Getenv("KILN_DATA"), "admin.token"), []byte("kiln_org_local\n"), 0o600)
	if c, _ := Resolve("", ""); c.Token != "kiln_org_local" || c.APIURL != DefaultAPIURL {
		t.Errorf("local server fallback: %+v", c)
	}
	t.Setenv("DEPOT_TOKEN", "depot")
	t.Setenv("DEPOT_API_URL", "http://depot.example:1/")
	if c, _ := Resolve("", ""); c.Token != "depot" || c.APIURL != "http://depot.example:1" {
		t.Errorf("DEPOT_* env: %+v", c)
	}
	t.Setenv("KILN_TOKEN", "kiln")
	if c, _ := Resolve("", "flag"); c.Token != "flag" {
		t.Errorf("flag beats env: %+v", c)
	}
	if _, err := Resolve("ftp://x", "t"); err == nil {
		t.Errorf("non-http API URL accepted")
	}
}
