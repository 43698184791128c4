package depotext

import (
	"encoding/json"
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

// The options a build record keeps carry the fields depot-go lacks
// (save_tags) through the store and back, as the client sent them.
func TestOptionsKeepUnknownFields(t *testing.T) {
	o := &cliv1.BuildOptions{Command: cliv1.Command_COMMAND_BUILD, Save: true, Tags: []string{"app:1"}}
	SetSaveTags(o, []string{"v1", "latest"})
	stored, err := json.Marshal(Options{o})
	if err != nil {
		t.Fatal(err)
	}
	var got Options
	if err := json.Unmarshal(stored, &got); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || !proto.Equal(got[0], o) {
		t.Fatalf("round trip = %v, want %v", got, o)
	}
	if tags := SaveTags(got[0]); !slices.Equal(tags, []string{"v1", "latest"}) {
		t.Errorf("SaveTags after the round trip = %q", tags)
	}

	// Records written before: encoding/json's form.
	old, _ := json.Marshal([]*cliv1.BuildOptions{{Command: cliv1.Command_COMMAND_BAKE, Push: true}})
	if err := json.Unmarshal(old, &got); err != nil || len(got) != 1 || got[0].Command != cliv1.Command_COMMAND_BAKE || !got[0].Push {
		t.Errorf("old record = %v, %v", got, err)
	}
	for _, none := range []string{"null", "[]"} {
		if err := json.Unmarshal([]byte(none), &got); err != nil || len(got) != 0 {
			t.Errorf("%s = %v, %v", none, got, err)
		}
	}
	if b, _ := json.Marshal(Options(nil)); string(b) != "null" {
		t.Errorf("no options stored as %s", b)
	}
}

// Registry.load_using_registry is field 3, a bool, as Depot's CLI decodes
// it: the bytes kiln writes are exactly a generated message's, and survive
// depot-go's decoding inside a CreateBuildResponse.
func TestLoadUsingRegistryWire(t *testing.T) {
	r := &cliv1.Registry{}
	SetLoadUsingRegistry(r, true)
	wire, err := proto.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	want := protowire.AppendVarint(protowire.AppendTag(nil, 3, protowire.VarintType), 1)
	if string(wire) != string(want) {
		t.Errorf("encoded %x, want %x (field 3, varint 1)", wire, want)
	}
	res, err := proto.Marshal(&cliv1.CreateBuildResponse{BuildId: "b1", Registry: r})
	if err != nil {
		t.Fatal(err)
	}
	var got cliv1.CreateBuildResponse
	if err := proto.Unmarshal(res, &got); err != nil {
		t.Fatal(err)
	}
	if !LoadUsingRegistry(got.Registry) || got.BuildId != "b1" {
		t.Errorf("decoded: load_using_registry=%v, %v", LoadUsingRegistry(got.Registry), &got)
	}
	off := &cliv1.Registry{}
	SetLoadUsingRegistry(off, false)
	if LoadUsingRegistry(off) || LoadUsingRegistry(nil) || len(off.ProtoReflect().GetUnknown()) != 0 {
		t.Errorf("false writes nothing and reads false")
	}
	// Malformed bytes read as false, never panic.
	bad := &cliv1.Registry{}
	bad.ProtoReflect().SetUnknown([]byte{0x18})
	if LoadUsingRegistry(bad) {
		t.Errorf("a truncated field read as true")
	}
}
