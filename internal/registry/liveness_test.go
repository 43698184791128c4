package registry

import (
	"slices"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
)

// The collector's liveness rule, case by case, without storage or store.
func TestLiveManifests(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	cutoff := now.Add(-24 * time.Hour)
	old, fresh := cutoff.Add(-time.Minute), cutoff.Add(time.Minute)

	d := func(name string) digest.Digest { return digest.FromString(name) }
	desc := func(name string) v1.Descriptor { return v1.Descriptor{Digest: d(name)} }
	img := func(blobs ...string) manifestInfo {
		var info manifestInfo
		for _, b := range blobs {
			info.blobs = append(info.blobs, desc(b))
		}
		return info
	}
	idx := func(children ...string) manifestInfo {
		var info manifestInfo
		for _, c := range children {
			info.children = append(info.children, desc(c))
		}
		return info
	}
	referrer := func(subject string) manifestInfo { return manifestInfo{subject: d(subject).String()} }

	// m is one manifest in storage: its name, what it is, when pushed.
	type m struct {
		name   string
		info   manifestInfo
		pushed time.Time
	}
	cases := []struct {
		name      string
		manifests []m
		tags      map[string]string // tag → manifest name
		want      []string          // the live manifests
	}{
		{
			name:      "tagged manifests live, whenever pushed",
			manifests: []m{{"a", img("l"), old}},
			tags:      map[string]string{"v1": "a"},
			want:      []string{"a"},
		},
		{
			name:      "untagged: retention decides",
			manifests: []m{{"old", img("l"), old}, {"fresh", img("l"), fresh}, {"at cutoff", img(), cutoff}},
			want:      []string{"fresh", "at cutoff"},
		},
		{
			name:      "never pushed (a deleted project's unindexed manifest) is past any retention",
			manifests: []m{{"a", img(), time.Time{}}},
			want:      nil,
		},
		{
			name: "a live index keeps its children, transitively",
			manifests: []m{
				{"top", idx("mid"), old}, {"mid", idx("amd64", "arm64"), old},
				{"amd64", img("l1"), old}, {"arm64", img("l2"), old}, {"stray", img(), old},
			},
			tags: map[string]string{"latest": "top"},
			want: []string{"top", "mid", "amd64", "arm64"},
		},
		{
			name:      "a child storage does not hold is not made live",
			manifests: []m{{"top", idx("missing", "here"), fresh}, {"here", img(), old}},
			want:      []string{"top", "here"},
		},
		{
			name:      "a dead index keeps nothing",
			manifests: []m{{"top", idx("child"), old}, {"child", img(), old}},
			want:      nil,
		},
		{
			name: "referrers of live manifests live, and their referrers",
			manifests: []m{
				{"image", img("l"), old}, {"sig", referrer("image"), old}, {"sig of sig", referrer("sig"), old},
				{"sbom of dead", referrer("dead"), old}, {"dead", img(), old},
			},
			tags: map[string]string{"v1": "image"},
			want: []string{"image", "sig", "sig of sig"},
		},
		{
			name: "a referrer of an index's child, and the referrer's own children",
			manifests: []m{
				{"top", idx("child"), fresh}, {"child", img(), old},
				{"att", referrer("child"), old}, {"att idx", manifestInfo{subject: d("child").String(), children: []v1.Descriptor{desc("att part")}}, old},
				{"att part", img(), old},
			},
			want: []string{"top", "child", "att", "att idx", "att part"},
		},
		{
			name:      "a fresh referrer lives though its subject is dead",
			manifests: []m{{"dead", img(), old}, {"sig", referrer("dead"), fresh}},
			want:      []string{"sig"},
		},
		{
			name:      "a tag on a manifest storage lacks is live, harmlessly",
			manifests: []m{{"a", img(), old}},
			tags:      map[string]string{"v1": "ghost"},
			want:      []string{"ghost"},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rc := repoContents{infos: map[digest.Digest]manifestInfo{}, tags: map[string]digest.Digest{},
				pushedAt: map[digest.Digest]time.Time{}}
			names := map[digest.Digest]string{}
			for _, x := range c.manifests {
				rc.digests = append(rc.digests, d(x.name))
				rc.infos[d(x.name)] = x.info
				if !x.pushed.IsZero() {
					rc.pushedAt[d(x.name)] = x.pushed
				}
				names[d(x.name)] = x.name
			}
			for tag, name := range c.tags {
				rc.tags[tag] = d(name)
				names[d(name)] = name
			}
			var got []string
			for dg, ok := range liveManifests(rc, cutoff) {
				if ok {
					got = append(got, names[dg])
				}
			}
			want := slices.Clone(c.want)
			slices.Sort(got)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Errorf("live = %q, want %q", got, want)
			}
		})
	}
}

func TestExpiredTagsAndCutoff(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	cutoff := retentionCutoff(now, time.Hour, false)
	if !cutoff.Equal(now.Add(-time.Hour)) {
		t.Errorf("cutoff = %v", cutoff)
	}
	rc := repoContents{
		tags:      map[string]digest.Digest{"old": "", "new": "", "unindexed": "", "b-old": ""},
		tagPushed: map[string]time.Time{"old": now.Add(-2 * time.Hour), "b-old": now.Add(-61 * time.Minute), "new": now},
	}
	if got := expiredTags(rc, cutoff); !slices.Equal(got, []string{"b-old", "old", "unindexed"}) {
		t.Errorf("expired = %q", got)
	}
	// A deleted project: everything expires, however fresh.
	if got := expiredTags(rc, retentionCutoff(now, time.Hour, true)); len(got) != 4 {
		t.Errorf("deleted project: expired = %q", got)
	}
}

func TestReferenced(t *testing.T) {
	a, b, l1, l2 := digest.FromString("a"), digest.FromString("b"), digest.FromString("l1"), digest.FromString("l2")
	infos := map[digest.Digest]manifestInfo{
		a: {blobs: []v1.Descriptor{{Digest: l1}, {Digest: l2}}},
		b: {children: []v1.Descriptor{{Digest: a}}},
	}
	got := referenced([]digest.Digest{b}, infos)
	if !got[b] || got[a] || got[l1] || len(got) != 1 {
		t.Errorf("an index references itself only (its children are kept manifests of their own): %v", got)
	}
	got = referenced([]digest.Digest{a}, infos)
	if !got[a] || !got[l1] || !got[l2] || len(got) != 3 {
		t.Errorf("an image references itself, its config and layers: %v", got)
	}
}
