package blob_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/internal/blob"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/testenv"
)

func TestValidKey(t *testing.T) {
	valid := []string{
		"a", "contexts/p1/build-1.tar.gz", "A.b_c-d/e", "x/.hidden", "a/b.", "_/-",
		strings.Repeat("k", 255), strings.Repeat("a/", 255) + "zz",
	}
	for _, k := range valid {
		if err := blob.ValidKey(k); err != nil {
			t.Errorf("ValidKey(%q) = %v, want nil", k, err)
		}
	}
	invalid := []string{
		"", "/a", "a/", "a//b", "..", "../a", "a/../b", "a..b", "a/..", ".", "./a", "a/./b", "a/.",
		"a b", "a\x00b", "a\nb", "a:b", "a?b", "a#b", "a%2e", "a\\b", "ü",
		strings.Repeat("k", 256), strings.Repeat("a/", 256) + "z",
	}
	for _, k := range invalid {
		if err := blob.ValidKey(k); !errdefs.IsInvalid(err) {
			t.Errorf("ValidKey(%q) = %v, want ErrInvalid", k, err)
		}
	}
}

// curlUpload sends file to a presigned URL with the real curl, as a
// platform's docs tell its users to.
func curlUpload(t *testing.T, p blob.Presigned, data []byte) {
	t.Helper()
	curl, err := exec.LookPath("curl")
	if err != nil {
		testenv.Missing(t, "curl not installed: run hack/setup.sh")
	}
	file := filepath.Join(t.TempDir(), "ctx.tar.gz")
	if err := os.WriteFile(file, data, 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"-sS", "--fail-with-body", "-T", file}
	for k, v := range p.Headers {
		args = append(args, "-H", k+": "+v)
	}
	out, err := exec.CommandContext(context.Background(), curl, append(args, p.URL)...).CombinedOutput()
	if err != nil {
		t.Fatalf("curl -T: %v\n%s", err, out)
	}
}
