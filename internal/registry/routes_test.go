package registry

import (
	"strings"
	"testing"
	"time"
)

func TestParseRoute(t *testing.T) {
	d := "sha256:" + strings.Repeat("a", 64)
	ok := []struct {
		path string
		kind routeKind
		name string
		ref  string
	}{
		{"/v2/", routeBase, "", ""},
		{"/v2", routeBase, "", ""},
		{"/v2/token", routeToken, "", ""},
		{"/v2/_catalog", routeCatalog, "", ""},
		{"/v2/p1/tags/list", routeTags, "p1", ""},
		{"/v2/p1/a/b/tags/list", routeTags, "p1/a/b", ""},
		{"/v2/p1/manifests/v1.0_rc-1", routeManifest, "p1", "v1.0_rc-1"},
		{"/v2/p1/app/manifests/" + d, routeManifest, "p1/app", d},
		{"/v2/p1/blobs/" + d, routeBlob, "p1", d},
		{"/v2/p1/blobs/uploads/", routeUploadStart, "p1", ""},
		{"/v2/p1/blobs/uploads", routeUploadStart, "p1", ""},
		{"/v2/p1/blobs/uploads/0b6f-4c1e-9b7a", routeUpload, "p1", "0b6f-4c1e-9b7a"},
		{"/v2/p1/referrers/" + d, routeReferrers, "p1", d},
		// Path components that look like endpoint words are names.
		{"/v2/p1/manifests/manifests/latest", routeManifest, "p1/manifests", "latest"},
		{"/v2/p1/blobs/blobs/" + d, routeBlob, "p1/blobs", d},
		{"/v2/p1/tags/tags/list", routeTags, "p1/tags", ""},
		{"/v2/a.b_c__d-e--f/x/tags/list", routeTags, "a.b_c__d-e--f/x", ""},
	}
	for _, c := range ok {
		rt, err := parseRoute(c.path)
		if err != nil || rt.kind != c.kind || rt.name != c.name || rt.ref != c.ref {
			t.Errorf("%s: %+v %v", c.path, rt, err)
		}
		if c.name != "" && rt.project != strings.Split(c.name, "/")[0] {
			t.Errorf("%s: project %q", c.path, rt.project)
		}
	}
	bad := []struct{ path, code string }{
		{"/v2/P1/tags/list", "NAME_INVALID"},
		{"/v2/p1/../x/tags/list", "NAME_INVALID"},
		{"/v2//p1/tags/list", "NAME_INVALID"},
		{"/v2/p1//x/tags/list", "NAME_INVALID"},
		{"/v2/-p1/tags/list", "NAME_INVALID"},
		{"/v2/p1./tags/list", "NAME_INVALID"},
		{"/v2/p1/a%2Fb/tags/list", "NAME_INVALID"},
		{"/v2/p1/\x00/tags/list", "NAME_INVALID"},
		{"/v2/" + strings.Repeat("a/", 129) + "tags/list", "NAME_INVALID"},
		{"/v2/p1/manifests/sha256:xyz", "DIGEST_INVALID"},
		{"/v2/p1/manifests/md5:" + strings.Repeat("a", 32), "DIGEST_INVALID"},
		{"/v2/p1/blobs/latest", "DIGEST_INVALID"},
		{"/v2/p1/blobs/sha256:" + strings.Repeat("a", 63), "DIGEST_INVALID"},
		{"/v2/p1/referrers/v1", "DIGEST_INVALID"},
		{"/v2/p1/blobs/uploads/../../x", "NOT_FOUND"},
		{"/v2/p1/blobs/uploads/a%2F..", "BLOB_UPLOAD_UNKNOWN"},
		{"/v2/p1", "NOT_FOUND"},
		{"/v2/p1/whatever", "NOT_FOUND"},
		{"/v3/p1/tags/list", "NOT_FOUND"},
		{"/v2/tags/list", "NOT_FOUND"},
	}
	for _, c := range bad {
		if rt, err := parseRoute(c.path); err == nil || err.code != c.code {
			t.Errorf("%q: %+v %v, want %s", c.path, rt, err, c.code)
		}
	}
	// A bad tag is a route: unknown to reads and deletes, refused to pushes.
	for _, ref := range []string{".INVALID_MANIFEST_NAME", "-bad", strings.Repeat("t", 129), "a b"} {
		rt, err := parseRoute("/v2/p1/manifests/" + ref)
		if err != nil || !rt.badTag || rt.kind != routeManifest {
			t.Errorf("tag %q: %+v %v", ref, rt, err)
		}
		for _, m := range []string{"GET", "HEAD", "DELETE"} {
			if e := tagRefused(rt, m); e != nil {
				t.Errorf("%s tag %q: %v", m, ref, e)
			}
		}
		if e := tagRefused(rt, "PUT"); e == nil || e.code != "TAG_INVALID" || e.status != 400 {
			t.Errorf("PUT tag %q: %v", ref, e)
		}
	}
	if rt, _ := parseRoute("/v2/p1/manifests/latest"); rt.badTag || tagRefused(rt, "PUT") != nil {
		t.Errorf("latest: %+v", rt)
	}
}

func TestParseScopes(t *testing.T) {
	got, err := parseScopes([]string{"repository:p1/app:pull,push", "repository:p1/x:pull repository(plugin):p2/y:*", "registry:catalog:*", "garbage", "a:b", "repository:localhost:5000/p1:pull"})
	if err != nil {
		t.Fatal(err)
	}
	want := []scope{{"repository", "p1/app", actPull | actPush}, {"repository", "p1/x", actPull}, {"repository", "p2/y", actAll},
		{"registry", "catalog", actAll}, {"repository", "localhost:5000/p1", actPull}}
	if len(got) != len(want) {
		t.Fatalf("scopes = %+v", got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("scope %d = %+v, want %+v", i, got[i], want[i])
		}
	}
	if _, err := parseScopes([]string{strings.Repeat("repository:p1:pull ", maxScopes+1)}); err == nil {
		t.Errorf("%d scopes accepted", maxScopes+1)
	}
	if a := parseActions("pull,bogus,,delete"); a != actPull|actDelete || a.String() != "pull,delete" {
		t.Errorf("parseActions = %v", a)
	}
}

func TestParseRetention(t *testing.T) {
	for in, want := range map[string]time.Duration{"14d": 14 * 24 * time.Hour, "0.5d": 12 * time.Hour, "36h": 36 * time.Hour, "90m": 90 * time.Minute, "2s": 2 * time.Second, "0": 0} {
		if got, err := ParseRetention(in); err != nil || got != want {
			t.Errorf("ParseRetention(%q) = %v, %v", in, got, err)
		}
	}
	for _, in := range []string{"", "d", "-1d", "-5h", "14", "1y", "99999d", "1e309d", "NaNd"} {
		if got, err := ParseRetention(in); err == nil {
			t.Errorf("ParseRetention(%q) = %v, want an error", in, got)
		}
	}
	if s := FormatRetention(14 * 24 * time.Hour); s != "14d" {
		t.Errorf("FormatRetention = %q", s)
	}
}

func TestPins(t *testing.T) {
	clock := &testClock{}
	p := newPins(clock.now)
	ran := 0
	del := func() error { ran++; return nil }
	if ok, _ := p.ifIdle("d:x", time.Hour, del); !ok || ran != 1 {
		t.Fatalf("never-touched key not deleted")
	}
	p.touch("d:x")
	if ok, _ := p.ifIdle("d:x", time.Hour, del); ok {
		t.Errorf("touched key deleted within grace")
	}
	clock.advance(59 * time.Minute)
	if ok, _ := p.ifIdle("d:x", time.Hour, del); ok {
		t.Errorf("touched key deleted within grace (59 minutes on)")
	}
	clock.advance(time.Minute)
	if ok, _ := p.ifIdle("d:x", time.Hour, del); !ok || ran != 2 {
		t.Errorf("key not deleted once the grace period passed")
	}
	p.touch("d:x")
	end := p.begin("u:r:1")
	if ok, _ := p.ifIdle("u:r:1", 0, del); ok {
		t.Errorf("key in use deleted")
	}
	end()
	if ok, _ := p.ifIdle("u:r:1", 0, del); !ok {
		t.Errorf("released key not deleted with zero grace")
	}
	p.prune(0)
	if !p.idle("d:x", time.Hour) {
		t.Errorf("pruned key still pinned")
	}
}
