package storetest

import (
	"context"
	"reflect"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/store"
)

func registryIndex(t *testing.T, s store.Store) {
	ctx := context.Background()
	seed(t, s, "o1", "p1", "p2")
	put := func(m store.RegistryManifest, tag string) {
		t.Helper()
		if m.ProjectID == "" {
			m.ProjectID = m.Repo[:2]
		}
		if err := s.PutRegistryManifest(ctx, m, tag); err != nil {
			t.Fatalf("PutRegistryManifest(%s@%s): %v", m.Repo, m.Digest, err)
		}
	}
	img := store.RegistryManifest{Repo: "p1", Digest: "sha256:aa", MediaType: "application/vnd.oci.image.manifest.v1+json",
		ArtifactType: "application/vnd.oci.image.config.v1+json", Size: 100, TotalSize: 1000, PushedAt: now}
	put(img, "latest")
	put(store.RegistryManifest{Repo: "p1", Digest: "sha256:sig", MediaType: img.MediaType, ArtifactType: "application/vnd.example.sig",
		Subject: "sha256:aa", Size: 10, Annotations: map[string]string{"k": "v"}, PushedAt: now.Add(time.Second)}, "")
	put(store.RegistryManifest{Repo: "p1", Digest: "sha256:sbom", MediaType: img.MediaType, ArtifactType: "application/vnd.example.sbom",
		Subject: "sha256:aa", Size: 20, PushedAt: now.Add(2 * time.Second)}, "")
	put(store.RegistryManifest{Repo: "p1/web", Digest: "sha256:bb", MediaType: img.MediaType, Size: 5, TotalSize: 50, PushedAt: now}, "v1")
	put(store.RegistryManifest{Repo: "p1/web", Digest: "sha256:bb", MediaType: img.MediaType, Size: 5, TotalSize: 50, PushedAt: now}, "v2")
	// Another project's manifest with the same subject digest: never its referrer.
	put(store.RegistryManifest{Repo: "p2", Digest: "sha256:other", Subject: "sha256:aa", PushedAt: now}, "x")

	got, err := s.GetRegistryManifest(ctx, "p1", "sha256:sig")
	if err != nil || got.Annotations["k"] != "v" || got.Subject != "sha256:aa" || !got.PushedAt.Equal(now.Add(time.Second)) {
		t.Errorf("GetRegistryManifest = %+v, %v", got, err)
	}
	if _, err := s.GetRegistryManifest(ctx, "p2", "sha256:sig"); !errdefs.IsNotFound(err) {
		t.Errorf("manifest of another repository: %v", err)
	}

	refs, err := s.ListRegistryReferrers(ctx, "p1", "sha256:aa", "")
	if err != nil || len(refs) != 2 || refs[0].Digest != "sha256:sig" || refs[1].Digest != "sha256:sbom" {
		t.Errorf("referrers = %+v, %v", refs, err)
	}
	refs, err = s.ListRegistryReferrers(ctx, "p1", "sha256:aa", "application/vnd.example.sbom")
	if err != nil || len(refs) != 1 || refs[0].Digest != "sha256:sbom" {
		t.Errorf("referrers filtered = %+v, %v", refs, err)
	}

	// Tags of a project, in (repo, tag) order, with their manifest's size,
	// paged with the after-pair.
	tags, err := s.ListRegistryTags(ctx, store.RegistryTagQuery{ProjectID: "p1"})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tg := range tags {
		names = append(names, tg.Repo+":"+tg.Tag)
	}
	if want := []string{"p1:latest", "p1/web:v1", "p1/web:v2"}; !reflect.DeepEqual(names, want) {
		t.Errorf("tags = %v, want %v", names, want)
	}
	if tags[0].Size != 1000 || tags[0].Digest != "sha256:aa" {
		t.Errorf("tag row = %+v", tags[0])
	}
	page, err := s.ListRegistryTags(ctx, store.RegistryTagQuery{ProjectID: "p1", AfterRepo: "p1/web", AfterTag: "v1", Limit: 5})
	if err != nil || len(page) != 1 || page[0].Tag != "v2" {
		t.Errorf("page after p1/web:v1 = %+v, %v", page, err)
	}
	page, _ = s.ListRegistryTags(ctx, store.RegistryTagQuery{ProjectID: "p1", Limit: 1})
	if len(page) != 1 || page[0].Tag != "latest" {
		t.Errorf("first page of 1 = %+v", page)
	}
	page, _ = s.ListRegistryTags(ctx, store.RegistryTagQuery{Repo: "p1/web"})
	if len(page) != 2 {
		t.Errorf("one repository's tags = %+v", page)
	}

	// Moving a tag updates its digest and time.
	later := now.Add(time.Hour)
	put(store.RegistryManifest{Repo: "p1/web", Digest: "sha256:cc", PushedAt: later}, "v1")
	page, _ = s.ListRegistryTags(ctx, store.RegistryTagQuery{Repo: "p1/web"})
	if page[0].Digest != "sha256:cc" || !page[0].PushedAt.Equal(later) || page[0].Size != 0 {
		t.Errorf("moved tag = %+v", page[0])
	}

	// A tag alone (the collector indexing a tag it found in storage).
	if err := s.PutRegistryTag(ctx, store.RegistryTag{Repo: "p1/web", Tag: "v3", ProjectID: "p1", Digest: "sha256:bb", PushedAt: later}); err != nil {
		t.Fatal(err)
	}
	if page, _ = s.ListRegistryTags(ctx, store.RegistryTagQuery{Repo: "p1/web", AfterRepo: "p1/web", AfterTag: "v2"}); len(page) != 1 || page[0].Digest != "sha256:bb" || page[0].Size != 50 {
		t.Errorf("PutRegistryTag row = %+v", page)
	}

	// Deleting a manifest drops the tags that point at it, nothing else.
	if err := s.DeleteRegistryManifest(ctx, "p1/web", "sha256:bb"); err != nil {
		t.Fatal(err)
	}
	page, _ = s.ListRegistryTags(ctx, store.RegistryTagQuery{Repo: "p1/web"})
	if len(page) != 1 || page[0].Tag != "v1" {
		t.Errorf("after deleting sha256:bb: %+v", page)
	}
	if err := s.DeleteRegistryManifest(ctx, "p1/web", "sha256:bb"); err != nil {
		t.Errorf("deleting a missing manifest: %v", err)
	}
	if err := s.DeleteRegistryTag(ctx, "p1/web", "v1"); err != nil {
		t.Fatal(err)
	}
	if ms, _ := s.ListRegistryManifests(ctx, "p1/web"); len(ms) != 1 || ms[0].Digest != "sha256:cc" {
		t.Errorf("untagging kept the manifest row? %+v", ms)
	}

	repos, err := s.ListRegistryRepos(ctx)
	if err != nil || !reflect.DeepEqual(repos, []string{"p1", "p1/web", "p2"}) {
		t.Errorf("repos = %v, %v", repos, err)
	}
	if err := s.DeleteRegistryRepo(ctx, "p1/web"); err != nil {
		t.Fatal(err)
	}
	if repos, _ := s.ListRegistryRepos(ctx); !reflect.DeepEqual(repos, []string{"p1", "p2"}) {
		t.Errorf("repos after DeleteRegistryRepo = %v", repos)
	}

	// Settings: zero until set; deleted with the project, like its rows.
	if rs, err := s.GetRegistrySettings(ctx, "p1"); err != nil || rs.Retention != 0 {
		t.Errorf("unset settings = %+v, %v", rs, err)
	}
	if err := s.PutRegistrySettings(ctx, store.RegistrySettings{ProjectID: "p1", Retention: 14 * 24 * time.Hour}); err != nil {
		t.Fatal(err)
	}
	if err := s.PutRegistrySettings(ctx, store.RegistrySettings{ProjectID: "p1", Retention: 3 * time.Hour}); err != nil {
		t.Fatal(err)
	}
	if rs, _ := s.GetRegistrySettings(ctx, "p1"); rs.Retention != 3*time.Hour {
		t.Errorf("settings = %+v", rs)
	}
	if err := s.DeleteProject(ctx, "p1"); err != nil {
		t.Fatal(err)
	}
	if rs, _ := s.GetRegistrySettings(ctx, "p1"); rs.Retention != 0 {
		t.Errorf("settings outlived their project: %+v", rs)
	}
	if ms, _ := s.ListRegistryManifests(ctx, "p1"); len(ms) != 0 {
		t.Errorf("manifest rows outlived their project: %+v", ms)
	}
	if ms, _ := s.ListRegistryManifests(ctx, "p2"); len(ms) != 1 {
		t.Errorf("another project's rows went with it: %+v", ms)
	}
}
