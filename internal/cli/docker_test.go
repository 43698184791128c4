package cli

import (
	"bytes"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// fakeKiln is a file named kiln for the plugins to link to.
func fakeKiln(t *testing.T) string {
	t.Helper()
	exe := filepath.Join(t.TempDir(), "kiln")
	if err := os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return exe
}

func readConfig(t *testing.T, dir string) map[string]any {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestConfigureDockerRestoresBytes(t *testing.T) {
	for name, config := range map[string]string{
		"other keys":        "{\"auths\":{\"r.invalid\":{}},\n \"credsStore\": \"pass\"}\n",
		"previous alias":    `{"aliases": {"builder": "mybuilder"}, "psFormat": "x"}`,
		"empty file":        "",
		"empty aliases":     `{"aliases": {}}`,
		"unusual spacing":   "  {  \"detachKeys\" :\"ctrl-e,e\" }  ",
		"reinstall (twice)": `{"auths": {}}`,
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			os.WriteFile(filepath.Join(dir, "config.json"), []byte(config), 0o640)
			exe := fakeKiln(t)
			if err := installDocker(io.Discard, dir, exe, false); err != nil {
				t.Fatal(err)
			}
			if strings.HasPrefix(name, "reinstall") {
				if err := installDocker(io.Discard, dir, exe, false); err != nil {
					t.Fatal(err)
				}
			}
			m := readConfig(t, dir)
			if m["aliases"].(map[string]any)["builder"] != "buildx" {
				t.Errorf("aliases after install: %v", m["aliases"])
			}
			for _, p := range []string{pluginName, buildxName} {
				if target, err := os.Readlink(filepath.Join(dir, "cli-plugins", p)); err != nil || target != exe {
					t.Errorf("%s → %q, %v", p, target, err)
				}
			}
			if err := uninstallDocker(io.Discard, dir, false); err != nil {
				t.Fatal(err)
			}
			b, _ := os.ReadFile(filepath.Join(dir, "config.json"))
			if string(b) != config {
				t.Errorf("config.json after uninstall = %q, want %q", b, config)
			}
			if fi, _ := os.Stat(filepath.Join(dir, "config.json")); fi.Mode().Perm() != 0o640 {
				t.Errorf("config.json mode %v, want 0640", fi.Mode().Perm())
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 1 {
				t.Errorf("left in the config dir: %v", entries)
			}
		})
	}
}

// Without a config dir, the install creates it and the uninstall removes
// everything it made.
func TestConfigureDockerNoConfig(t *testing.T) {
	dir := filepath.Join(t.TempDir(), ".docker")
	if err := installDocker(io.Discard, dir, fakeKiln(t), false); err != nil {
		t.Fatal(err)
	}
	if err := uninstallDocker(io.Discard, dir, false); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		entries, _ := os.ReadDir(dir)
		t.Errorf("%s still there after uninstall: %v", dir, entries)
	}
}

// A config.json changed after the install (docker login) keeps the change;
// only kiln's alias goes.
func TestConfigureDockerKeepsLaterChanges(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "config.json"), []byte(`{"auths": {"a.invalid": {}}}`), 0o600)
	if err := installDocker(io.Discard, dir, fakeKiln(t), false); err != nil {
		t.Fatal(err)
	}
	m := readConfig(t, dir)
	m["auths"].(map[string]any)["b.invalid"] = map[string]any{}
	b, _ := json.Marshal(m)
	os.WriteFile(filepath.Join(dir, "config.json"), b, 0o600)
	var out bytes.Buffer
	if err := uninstallDocker(&out, dir, false); err != nil {
		t.Fatal(err)
	}
	m = readConfig(t, dir)
	if _, ok := m["aliases"]; ok {
		t.Errorf("aliases left after uninstall: %v", m)
	}
	if auths := m["auths"].(map[string]any); len(auths) != 2 {
		t.Errorf("auths after uninstall: %v", auths)
	}
	if !strings.Contains(out.String(), "changed since the install") {
		t.Errorf("uninstall does not say it kept the changes: %s", out.String())
	}
}

// A buildx that was installed is kept aside and comes back.
func TestConfigureDockerKeepsBuildx(t *testing.T) {
	dir := t.TempDir()
	plugins := filepath.Join(dir, "cli-plugins")
	os.MkdirAll(plugins, 0o755)
	os.WriteFile(filepath.Join(plugins, buildxName), []byte("real buildx"), 0o751)
	if err := installDocker(io.Discard, dir, fakeKiln(t), false); err != nil {
		t.Fatal(err)
	}
	if err := uninstallDocker(io.Discard, dir, false); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(filepath.Join(plugins, buildxName))
	b, _ := os.ReadFile(filepath.Join(plugins, buildxName))
	if err != nil || string(b) != "real buildx" || fi.Mode().Perm() != 0o751 {
		t.Errorf("docker-buildx after uninstall: %q %v %v", b, fi, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "config.json")); !os.IsNotExist(err) {
		t.Errorf("config.json kiln created is still there: %v", err)
	}
}

func TestConfigureDockerRefusesBadConfig(t *testing.T) {
	for name, config := range map[string]string{
		"not JSON":           `{"auths": {`,
		"not an object":      `[1, 2]`,
		"aliases not object": `{"aliases": "buildx"}`,
		"builder not string": `{"aliases": {"builder": 1}}`,
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "config.json")
			os.WriteFile(path, []byte(config), 0o600)
			err := installDocker(io.Discard, dir, fakeKiln(t), false)
			if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "nothing was changed") {
				t.Errorf("install over %s: %v", config, err)
			}
			if b, _ := os.ReadFile(path); string(b) != config {
				t.Errorf("config.json changed to %q", b)
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 1 {
				t.Errorf("install made %v", entries)
			}
		})
	}
}

func TestTranslateBuildxArgs(t *testing.T) {
	for _, tc := range []struct{ in, want []string }{
		{[]string{"-t", "x", "."}, []string{"--load", "-t", "x", "."}},
		{[]string{"--builder", "b", "--pull", "--rm", "-q", "--push", "-t", "x", "."}, []string{"--progress=quiet", "--push", "-t", "x", "."}},
		{[]string{"-otype=local,dest=out", "--allow=network.host", "."}, []string{"-otype=local,dest=out", "."}},
		{[]string{"--output", "type=tar,dest=-", "."}, []string{"--output", "type=tar,dest=-", "."}},
		{[]string{"--call=check", "."}, []string{"--call=check", "."}},
	} {
		if got := translateBuildArgs(tc.in); !slices.Equal(got, tc.want) {
			t.Errorf("build %q → %q, want %q", tc.in, got, tc.want)
		}
	}
	// What Compose v5 runs.
	in := []string{"--file", "-", "--progress", "rawjson", "--metadata-file", "/tmp/m.json", "--allow", "fs.read=/src", "--allow", "security.insecure", "--sbom=true", "--provenance=mode=max"}
	want := []string{"--file", "-", "--progress", "rawjson", "--metadata-file", "/tmp/m.json", "--set=*.attest=type=sbom", "--provenance=mode=max"}
	if got := translateBakeArgs(in); !slices.Equal(got, want) {
		t.Errorf("bake %q → %q, want %q", in, got, want)
	}
	if got := dropBuildxGlobals([]string{"--builder", "x", "-D", "bake", "--builder", "y"}); !slices.Equal(got, []string{"bake", "--builder", "y"}) {
		t.Errorf("dropBuildxGlobals = %q", got)
	}
}

// kiln's own lines in a rawjson stream become "[kiln] …" vertices; the
// solve statuses pass through as they are.
func TestMarkRawJSON(t *testing.T) {
	in := "{\"vertexes\":[{\"digest\":\"sha256:1\",\"name\":\"[app 1/2] RUN x\"}]}\nkiln: build abc in project p: app\n\n"
	var out bytes.Buffer
	markRawJSON(strings.NewReader(in), &out, "first")
	var names []string
	var raw []string
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		var st struct {
			Vertexes []struct {
				Digest, Name string
				Completed    *string
			}
		}
		if err := json.Unmarshal([]byte(line), &st); err != nil {
			raw = append(raw, line)
			continue
		}
		for _, v := range st.Vertexes {
			if v.Digest == "" {
				t.Errorf("vertex without digest: %s", line)
			}
			names = append(names, v.Name)
		}
	}
	want := []string{"[kiln] first", "[app 1/2] RUN x", "[kiln] build abc in project p: app"}
	if !slices.Equal(names, want) || !slices.Equal(raw, []string{"kiln: build abc in project p: app"}) {
		t.Errorf("vertices %q (want %q), other lines %q", names, want, raw)
	}
}

// A docker-buildx installed after kiln's stays; the one kiln kept is not
// lost, and the next install and uninstall bring it back.
func TestConfigureDockerBuildxReplacedSince(t *testing.T) {
	dir := t.TempDir()
	plugins := filepath.Join(dir, "cli-plugins")
	os.MkdirAll(plugins, 0o755)
	link := filepath.Join(plugins, buildxName)
	os.WriteFile(link, []byte("first buildx"), 0o755)
	exe := fakeKiln(t)
	if err := installDocker(io.Discard, dir, exe, false); err != nil {
		t.Fatal(err)
	}
	os.Remove(link)
	os.WriteFile(link, []byte("second buildx"), 0o755)
	if err := uninstallDocker(io.Discard, dir, false); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(link); string(b) != "second buildx" {
		t.Errorf("docker-buildx installed since = %q", b)
	}
	if err := installDocker(io.Discard, dir, exe, false); err == nil || !strings.Contains(err.Error(), "earlier install kept") {
		t.Errorf("install with a kept buildx and another one: %v", err)
	}
	os.Remove(link)
	if err := installDocker(io.Discard, dir, exe, false); err != nil {
		t.Fatal(err)
	}
	if err := uninstallDocker(io.Discard, dir, false); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(link); string(b) != "first buildx" {
		t.Errorf("docker-buildx after the second uninstall = %q", b)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 1 {
		t.Errorf("left in the config dir: %v", entries)
	}
}

// Outside a kiln project, docker build says it runs on kiln and how to undo.
func TestCheckBuildProject(t *testing.T) {
	t.Setenv("KILN_PROJECT_ID", "")
	t.Setenv("DEPOT_PROJECT_ID", "")
	dir := t.TempDir()
	if err := checkBuildProject([]string{"--load", "-t", "x", dir}); err == nil || !strings.Contains(err.Error(), "no project") {
		t.Errorf("no project: %v", err)
	}
	if err := checkBuildProject([]string{dir, "--project", "p1"}); err != nil {
		t.Errorf("--project after the context: %v", err)
	}
	os.WriteFile(filepath.Join(dir, "kiln.json"), []byte(`{"id": "p1"}`), 0o644)
	if err := checkBuildProject([]string{"-t", "x", dir}); err != nil {
		t.Errorf("kiln.json: %v", err)
	}
}

// A config.json that is a link stays a link to the same, restored, file.
func TestConfigureDockerConfigLink(t *testing.T) {
	dir := t.TempDir()
	real := filepath.Join(t.TempDir(), "dotfiles-config.json")
	os.WriteFile(real, []byte(`{"auths": {}}`), 0o600)
	os.Symlink(real, filepath.Join(dir, "config.json"))
	if err := installDocker(io.Discard, dir, fakeKiln(t), false); err != nil {
		t.Fatal(err)
	}
	if m := readConfig(t, dir); m["aliases"] == nil {
		t.Errorf("no alias through the link: %v", m)
	}
	if err := uninstallDocker(io.Discard, dir, false); err != nil {
		t.Fatal(err)
	}
	if target, err := os.Readlink(filepath.Join(dir, "config.json")); err != nil || target != real {
		t.Errorf("config.json after uninstall: link to %q, %v", target, err)
	}
	if b, _ := os.ReadFile(real); string(b) != `{"auths": {}}` {
		t.Errorf("linked config after uninstall = %q", b)
	}
}

// A line longer than the scanner's buffer does not leave the child
// blocked on a full pipe: the rest of the stream still arrives.
func TestMarkRawJSONLongLine(t *testing.T) {
	long := strings.Repeat("x", 17<<20)
	in := "kiln: before\n" + long + "\nafter\n"
	var out bytes.Buffer
	markRawJSON(strings.NewReader(in), &out, "first")
	if !strings.Contains(out.String(), "after") || !strings.Contains(out.String(), "progress stream:") {
		t.Errorf("output lacks the rest of the stream or the note (%d bytes)", out.Len())
	}
}

// Build argument values never reach the "runs on kiln" line.
func TestShownArgsHideBuildArgValues(t *testing.T) {
	got := shownArgs([]string{"--build-arg", "NPM_TOKEN=s3cr3t", "--build-arg=GH=tok2", "--set", "*.args.KEY=tok3", "--set=app.args.K=tok4", "--set", "app.tags=x:1", "-t", "img", "."})
	for _, secret := range []string{"s3cr3t", "tok2", "tok3", "tok4"} {
		if strings.Contains(got, secret) {
			t.Errorf("shown args %q contain %q", got, secret)
		}
	}
	for _, kept := range []string{"NPM_TOKEN=…", "--build-arg=GH=…", "*.args.KEY=…", "app.tags=x:1", "-t img ."} {
		if !strings.Contains(got, kept) {
			t.Errorf("shown args %q lack %q", got, kept)
		}
	}
}
