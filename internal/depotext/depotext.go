// Package depotext reads and writes the fields of Depot's CLI protocol that
// the generated depot-go v0.5.3 types lack, so kiln keeps using those types
// on both sides of the wire: BuildOptions.save_tags (field 9 of
// depot.cli.v1.BuildOptions), which the depot CLI sends for `--save-tag`
// (depot-go decodes it into the message's unknown fields, where this
// package finds it, and writes it there for kiln's own CLI), and
// Registry.load_using_registry (field 3), which the server answers.
//
// It depends only on the protobuf runtime and depot-go's types: the server
// (internal/api/depot) and the CLI (internal/cli) both import it.
package depotext

import (
	"slices"

	cliv1 "github.com/depot/depot-go/proto/depot/cli/v1"
	"google.golang.org/protobuf/encoding/protowire"
)

// saveTagsField is BuildOptions.save_tags: repeated string save_tags = 9.
const saveTagsField protowire.Number = 9

// SaveTags returns BuildOptions.save_tags as the sender wrote them (in
// order, not validated: callers check them as untrusted input). Malformed
// unknown bytes, or a field 9 of another wire type, yield nothing rather
// than an error: they never came from a conforming client.
func SaveTags(o *cliv1.BuildOptions) []string {
	if o == nil {
		return nil
	}
	var tags []string
	b := o.ProtoReflect().GetUnknown()
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil
		}
		b = b[n:]
		if num == saveTagsField && typ == protowire.BytesType {
			v, m := protowire.ConsumeBytes(b)
			if m < 0 {
				return nil
			}
			tags = append(tags, string(v))
			b = b[m:]
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			return nil
		}
		b = b[m:]
	}
	return tags
}

// SetSaveTags replaces BuildOptions.save_tags with tags, keeping any other
// unknown fields.
func SetSaveTags(o *cliv1.BuildOptions, tags []string) {
	msg := o.ProtoReflect()
	var out []byte
	b := msg.GetUnknown()
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			break
		}
		m := protowire.ConsumeFieldValue(num, typ, b[n:])
		if m < 0 {
			break
		}
		if num != saveTagsField {
			out = append(out, b[:n+m]...)
		}
		b = b[n+m:]
	}
	for _, t := range slices.Clone(tags) {
		out = protowire.AppendTag(out, saveTagsField, protowire.BytesType)
		out = protowire.AppendString(out, t)
	}
	msg.SetUnknown(out)
}

// loadUsingRegistryField is Registry.load_using_registry: bool
// load_using_registry = 3 of depot.cli.v1.Registry, which depot-go v0.5.3
// lacks. Its binary encoding carries it as an unknown field; JSON does not
// (protojson drops unknown fields), so only protobuf clients see it — the
// depot CLI is one.
const loadUsingRegistryField protowire.Number = 3

// LoadUsingRegistry reads Registry.load_using_registry (the last value
// wins, as protobuf decoding does; malformed bytes read as false).
func LoadUsingRegistry(r *cliv1.Registry) bool {
	if r == nil {
		return false
	}
	on := false
	b := r.ProtoReflect().GetUnknown()
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return false
		}
		b = b[n:]
		if num == loadUsingRegistryField && typ == protowire.VarintType {
			v, m := protowire.ConsumeVarint(b)
			if m < 0 {
				return false
			}
			on = v != 0
			b = b[m:]
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			return false
		}
		b = b[m:]
	}
	return on
}

// SetLoadUsingRegistry sets Registry.load_using_registry; false (the
// default) writes nothing, as protobuf does.
func SetLoadUsingRegistry(r *cliv1.Registry, on bool) {
	if !on {
		return
	}
	msg := r.ProtoReflect()
	b := protowire.AppendTag(msg.GetUnknown(), loadUsingRegistryField, protowire.VarintType)
	msg.SetUnknown(protowire.AppendVarint(b, 1))
}
