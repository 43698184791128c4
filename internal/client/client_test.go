package client

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"connectrpc.com/connect"

	kilnv1 "github.com/kiln-dev/kiln/gen/kiln/v1"
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
	if _, err := Resolve("", ""); err == nil || !strings.Contains(err.Error(), "no token") && !strings.Contains(err.Error(), "no kiln server answers") {
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

// A newcomer's --api-url mistakes: localhost spelled another way finds the
// local admin token; a URL where nothing listens says so, naming it; a
// live server without a token says that.
func TestResolveLocalAndUnreachable(t *testing.T) {
	t.Setenv("HOME", t.TempDir())
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	t.Setenv("KILN_DATA", t.TempDir())
	for _, k := range []string{"KILN_API_URL", "DEPOT_API_URL", "KILN_TOKEN", "DEPOT_TOKEN"} {
		t.Setenv(k, "")
	}
	os.WriteFile(filepath.Join(os.Getenv("KILN_DATA"), "admin.token"), []byte("kiln_org_local\n"), 0o600)
	for _, u := range []string{"http://127.0.0.1:7420", "http://localhost:7420", "http://localhost:7420/", "http://[::1]:7420"} {
		if c, err := Resolve(u, ""); err != nil || c.Token != "kiln_org_local" {
			t.Errorf("Resolve(%s): %+v, %v; want the local admin token", u, c, err)
		}
	}
	for _, u := range []string{"https://localhost:7420", "http://example.com:7420", "http://localhost:7420/prefix"} {
		if c, _ := Resolve(u, ""); c.Token != "" {
			t.Errorf("Resolve(%s) used the local admin token", u)
		}
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + ln.Addr().String()
	ln.Close()
	_, err = Resolve(closed, "")
	if want := "no kiln server answers at " + closed + " (connection refused)"; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("nothing listening: %v; want %q", err, want)
	}

	live := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer live.Close()
	_, err = Resolve(live.URL, "")
	if err == nil || !strings.Contains(err.Error(), "no token for the kiln server at "+live.URL) {
		t.Errorf("a live server and no token: %v", err)
	}

	// With a token, a request to where nothing listens names the URL too.
	c := Config{APIURL: closed, Token: "t"}
	_, err = c.SourceBuilds().GetBuild(context.Background(), connect.NewRequest(&kilnv1.GetBuildRequest{BuildId: "x"}))
	if want := "no kiln server answers at " + closed; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("GetBuild at a closed port: %v; want %q", err, want)
	}
	stream, err := c.SourceBuilds().WatchBuild(context.Background(), connect.NewRequest(&kilnv1.WatchBuildRequest{BuildId: "x"}))
	if err == nil {
		for stream.Receive() {
		}
		err = stream.Err()
	}
	if want := "no kiln server answers at " + closed; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("WatchBuild at a closed port: %v; want %q", err, want)
	}
}
