package e2e

// The OCI distribution spec's own conformance suite
// (github.com/opencontainers/distribution-spec/conformance, pinned in
// tools/ocisuite/go.mod) against kiln's registry, with a project token, as
// a user's CI would push. kiln's own spec-derived tests are in
// registry_conformance_test.go; this one runs the upstream's cases
// unchanged and fails naming each one that did not pass.

import (
	"context"
	"encoding/xml"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// ociSuiteModule is the suite's package, built with tools/ocisuite/go.mod.
const ociSuiteModule = "github.com/opencontainers/distribution-spec/conformance"

// ociSuiteDisabled are the suite's switches kiln turns off, each with why
// (docs/registry.md says the same) and the case names it may skip. A case
// the suite skips otherwise (it skips what it finds unsupported) fails the
// test.
var ociSuiteDisabled = []struct{ env, skips, why string }{
	// A mount without from= would find a blob by digest alone, in any
	// project: the blob store is shared, and linking another project's
	// blob into yours because you know its digest is what per-project
	// isolation forbids. kiln answers such a POST with an upload session,
	// which the spec allows.
	{"OCI_API_BLOBS_MOUNT_ANONYMOUS", "/mount anonymous/", "a mount without from= could reach other projects' blobs"},
	// kiln's storage (distribution v3) keys manifests by their sha256
	// digest: a manifest pushed by a sha512 digest is refused (400
	// DIGEST_INVALID), and blobs pushed by a sha512 digest are stored and
	// served, but their answers name the sha256 digest.
	{"OCI_DATA_SHA512", "sha512", "distribution v3 stores content by sha256 only"},
}

// buildOCISuite compiles the suite into bin/ocisuite. go build compares
// build IDs and leaves an up-to-date binary alone, so this links only when
// the binary is missing or the pinned module (or Go) changed: under a
// second once built; about 30 s on a fresh 2-core machine (empty module
// and build caches), less where kiln was built first.
func buildOCISuite(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(repoRoot, "bin", "ocisuite")
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	start := time.Now()
	cmd := exec.CommandContext(ctx, "go", "build", "-modfile=tools/ocisuite/go.mod", "-o", bin, ociSuiteModule)
	cmd.Dir = repoRoot
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build the OCI conformance suite (tools/ocisuite/go.mod): %v\n%s", err, out)
	}
	t.Logf("OCI conformance suite built in %s", time.Since(start).Round(time.Millisecond))
	return bin
}

// junitCase is one case of the suite's junit.xml.
type junitCase struct {
	Name   string `xml:"name,attr"`
	Status string `xml:"status,attr"` // passed, skipped, failure, error
	Out    string `xml:"system-out"`  // the case's errors
}

// readJUnit reads the cases of a junit.xml.
func readJUnit(path string) ([]junitCase, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var doc struct {
		Suites []struct {
			Cases []junitCase `xml:"testcase"`
		} `xml:"testsuite"`
	}
	if err := xml.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var cases []junitCase
	for _, s := range doc.Suites {
		cases = append(cases, s.Cases...)
	}
	return cases, nil
}

func TestOCIConformanceSuite(t *testing.T) {
	t.Parallel()
	ociSuite(t, sharedServer(t))
}

// ociSuite runs the official suite against s's registry, in a project of
// its own.
func ociSuite(t *testing.T, s *server) {
	bin := buildOCISuite(t)
	proj := s.createProject(t, "ocisuite")
	token := s.projectToken(t, proj)
	u, err := url.Parse(s.URL)
	if err != nil {
		t.Fatal(err)
	}
	results := t.TempDir()
	env := []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + results,
		"OCI_VERSION=1.1",
		"OCI_REGISTRY=" + u.Host,
		"OCI_TLS=disabled",
		// Both repositories in the token's project: the suite mounts
		// blobs from repo2 into repo1, which kiln allows within a
		// project only.
		"OCI_REPO1=" + proj + "/conformance/repo1",
		"OCI_REPO2=" + proj + "/conformance/repo2",
		"OCI_USERNAME=x-token",
		"OCI_PASSWORD=" + token,
		"OCI_RESULTS_DIR=" + results,
		"OCI_LOG=warn",
		// Beyond 1.1's defaults, what kiln does: cancel an upload, and
		// the Docker-Content-Digest header on blob and manifest answers.
		"OCI_API_BLOBS_UPLOAD_CANCEL=true",
		"OCI_API_BLOBS_DIGEST_HEADER=true",
		"OCI_API_MANIFESTS_DIGEST_HEADER=true",
	}
	for _, d := range ociSuiteDisabled {
		env = append(env, d.env+"=false")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin)
	cmd.Dir, cmd.Env = results, env
	out, runErr := cmd.CombinedOutput()
	cases, err := readJUnit(filepath.Join(results, "junit.xml"))
	if err != nil {
		t.Fatalf("the suite wrote no report (%v): %v\n%s", runErr, err, tail(string(out), 8000))
	}
	var failed, skipped []string
	passed := 0
	for _, c := range cases {
		switch c.Status {
		case "passed":
			passed++
		case "skipped":
			skipped = append(skipped, c.Name)
		default:
			failed = append(failed, fmt.Sprintf("%s (%s): %s", c.Name, c.Status, strings.TrimSpace(tail(c.Out, 600))))
		}
	}
	sort.Strings(failed)
	t.Logf("OCI conformance suite: %d passed, %d failed, %d skipped of %d cases", passed, len(failed), len(skipped), len(cases))
	for _, f := range failed {
		t.Errorf("suite case failed: %s", f)
	}
	for _, sk := range skipped {
		why := ""
		for _, d := range ociSuiteDisabled {
			if strings.Contains(sk, d.skips) {
				why = d.env + "=false: " + d.why
			}
		}
		if why == "" {
			t.Errorf("suite case skipped, and no switch kiln sets disables it (the suite skips what it finds unsupported): %s", sk)
		} else {
			t.Logf("skipped by %s: %s", why, sk)
		}
	}
	if passed == 0 {
		t.Errorf("the suite passed no case:\n%s", tail(string(out), 8000))
	}
	if runErr != nil && len(failed) == 0 {
		t.Errorf("the suite exited with %v and no failed case:\n%s", runErr, tail(string(out), 8000))
	}
	if t.Failed() {
		t.Logf("suite output:\n%s", tail(string(out), 12000))
	}
}
