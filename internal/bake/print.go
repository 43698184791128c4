package bake

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
)

// WriteJSON writes the resolved definition the way `docker buildx bake
// --print` does ({"group": …, "target": …}, two-space indent), with each
// target's project as "project_id" (the attribute depot bake prints) when
// it has one of its own. Nothing is built and nothing is contacted.
func (d *Definition) WriteJSON(w io.Writer) error {
	targets := make(map[string]json.RawMessage, len(d.Targets))
	for name, t := range d.Targets {
		dt, err := json.Marshal(t) // bx.Target's own marshaling (escapes ${ in values)
		if err != nil {
			return fmt.Errorf("target %q: %w", name, err)
		}
		if p, ok := d.ProjectIDs[name]; ok {
			if dt, err = appendField(dt, projectAttr, p); err != nil {
				return fmt.Errorf("target %q: %w", name, err)
			}
		}
		targets[name] = dt
	}
	def := struct {
		Group  any                        `json:"group,omitempty"`
		Target map[string]json.RawMessage `json:"target"`
	}{Target: targets}
	if len(d.Groups) > 0 {
		def.Group = d.Groups
	}
	dt, err := json.MarshalIndent(def, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(w, string(dt))
	return err
}

// appendField adds "key": value as the last member of the JSON object obj,
// keeping the order buildx prints the others in.
func appendField(obj []byte, key, value string) ([]byte, error) {
	obj = bytes.TrimSpace(obj)
	if len(obj) < 2 || obj[0] != '{' || obj[len(obj)-1] != '}' {
		return nil, fmt.Errorf("not a JSON object")
	}
	k, _ := json.Marshal(key)
	v, _ := json.Marshal(value)
	var b bytes.Buffer
	b.Write(obj[:len(obj)-1])
	if len(bytes.TrimSpace(obj[1:len(obj)-1])) > 0 {
		b.WriteByte(',')
	}
	b.Write(k)
	b.WriteByte(':')
	b.Write(v)
	b.WriteByte('}')
	return b.Bytes(), nil
}
