package e2e

import (
	"io/fs"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/internal/blob/s3test"
)

// kiln's registry with its content in S3 (distribution's s3-aws driver)
// against a real S3 server, versitygw: the project's own registry
// conformance workflows and the official OCI suite pass as they do on
// local disk, a build saves into it, and the content is in the bucket,
// not in the data directory.
func TestRegistryOnS3(t *testing.T) {
	t.Parallel()
	gw := s3test.Start(t)
	s := startServerEnv(t, []string{"AWS_ACCESS_KEY_ID=" + gw.AccessKey, "AWS_SECRET_ACCESS_KEY=" + gw.SecretKey},
		"--registry-s3-bucket", gw.Bucket, "--registry-s3-endpoint", gw.Endpoint, "--registry-s3-region", gw.Region)

	t.Run("conformance", func(t *testing.T) { registryConformance(t, s) })
	t.Run("oci suite", func(t *testing.T) { ociSuite(t, s) })
	t.Run("build save", func(t *testing.T) {
		proj := s.createProject(t, "s3-save")
		dir := writeContext(t, map[string]string{"Dockerfile": "FROM scratch\nCOPY Dockerfile /\n"})
		r := s.kiln(t, dir, nil, "build", "--project", proj, "--progress", "plain", "--save", "--save-tag", "v1", ".")
		if r.Err != nil {
			t.Fatalf("kiln build --save: %v\n%s", r.Err, tail(r.Stderr, 4000))
		}
		_, body := s.oci(t, s.Token).expect(200, "GET", "/v2/"+proj+"/tags/list", nil)
		if !strings.Contains(string(body), `"v1"`) {
			t.Errorf("tags of %s: %s; want v1", proj, body)
		}
	})

	// Blobs, manifests and tag links are objects in the bucket (files of
	// versitygw's posix backend); the data directory holds no registry
	// content.
	var objects int
	_ = filepath.WalkDir(filepath.Join(gw.Root, gw.Bucket), func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.Contains(p, "/docker/registry/v2/") {
			objects++
		}
		return nil
	})
	if objects == 0 {
		t.Errorf("no registry objects in bucket %s", gw.Bucket)
	}
	var local []string
	_ = filepath.WalkDir(filepath.Join(s.Data, "registry"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.Contains(p, "/docker/registry/v2/") {
			local = append(local, p)
		}
		return nil
	})
	if len(local) > 0 {
		t.Errorf("registry content on local disk although S3 is configured: %v", local[:min(len(local), 5)])
	}
	t.Logf("%d registry objects in the bucket", objects)
}
