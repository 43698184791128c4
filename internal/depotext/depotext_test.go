package depotext

import (
	"slices"
	"testing"

	cliv1 "github.com/depot/depot-go/proto/depot/cli/v1"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// What the depot CLI sends (save_tags = 9) survives depot-go's decoding
// and is read back; kiln's CLI writes it the same way.
func TestSaveTagsRoundTrip(t *testing.T) {
	o := &cliv1.BuildOptions{Save: true, Tags: []string{"app:1"}}
	SetSaveTags(o, []string{"v1", "latest"})
	wire, err := proto.Marshal(o)
	if err != nil {
		t.Fatal(err)
	}
	var got cliv1.BuildOptions
	if err := proto.Unmarshal(wire, &got); err != nil {
		t.Fatal(err)
	}
	if tags := SaveTags(&got); !slices.Equal(tags, []string{"v1", "latest"}) {
		t.Errorf("SaveTags = %q", tags)
	}
	if !got.Save || !slices.Equal(got.Tags, []string{"app:1"}) {
		t.Errorf("known fields changed: %v", &got)
	}
	// Replacing keeps other unknown fields and drops the old tags.
	other := protowire.AppendTag(nil, 42, protowire.VarintType)
	other = protowire.AppendVarint(other, 7)
	got.ProtoReflect().SetUnknown(append(got.ProtoReflect().GetUnknown(), other...))
	SetSaveTags(&got, []string{"v2"})
	if tags := SaveTags(&got); !slices.Equal(tags, []string{"v2"}) {
		t.Errorf("after replace: %q", tags)
	}
	if u := got.ProtoReflect().GetUnknown(); len(u) < len(other) || string(u[:len(other)]) != string(other) {
		t.Errorf("other unknown field lost: %x", u)
	}
	SetSaveTags(&got, nil)
	if tags := SaveTags(&got); tags != nil {
		t.Errorf("after clearing: %q", tags)
	}
	if SaveTags(nil) != nil {
		t.Error("SaveTags(nil) returned tags")
	}
}

// Hostile or broken unknown bytes never panic and yield no tags.
func TestSaveTagsMalformed(t *testing.T) {
	varint9 := protowire.AppendVarint(protowire.AppendTag(nil, 9, protowire.VarintType), 1)
	truncated := protowire.AppendTag(nil, 9, protowire.BytesType)
	truncated = protowire.AppendVarint(truncated, 100) // claims 100 bytes
	truncated = append(truncated, "abc"...)
	for name, raw := range map[string][]byte{
		"field 9 as varint": varint9,
		"truncated string":  truncated,
		"garbage tag":       {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
	} {
		o := &cliv1.BuildOptions{}
		o.ProtoReflect().SetUnknown(raw)
		if tags := SaveTags(o); len(tags) != 0 {
			t.Errorf("%s: SaveTags = %q, want none", name, tags)
		}
		SetSaveTags(o, []string{"ok"}) // must not panic on the garbage
		if tags := SaveTags(o); name == "field 9 as varint" && !slices.Equal(tags, []string{"ok"}) {
			t.Errorf("%s: after SetSaveTags: %q", name, tags)
		}
	}
}
