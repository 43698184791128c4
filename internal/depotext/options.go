package depotext

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"

	cliv1 "github.com/depot/depot-go/proto/depot/cli/v1"
	"google.golang.org/protobuf/proto"
)

// Options are the BuildOptions a client sent with CreateBuild, as the
// build record keeps them. In JSON each message is its protobuf encoding
// (base64), not encoding/json's view of depot-go's struct, so the fields
// depot-go lacks — save_tags among them — survive being stored and are
// served back by GetPullInfo as the client sent them.
type Options []*cliv1.BuildOptions

// MarshalJSON encodes o as a JSON list of base64 protobuf messages.
func (o Options) MarshalJSON() ([]byte, error) {
	if o == nil {
		return []byte("null"), nil
	}
	out := make([]string, len(o))
	for i, m := range o {
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
		if err != nil {
			return nil, fmt.Errorf("build options %d: %w", i, err)
		}
		out[i] = base64.StdEncoding.EncodeToString(b)
	}
	return json.Marshal(out)
}

// UnmarshalJSON reads what MarshalJSON wrote, and the records written
// before it: a list of BuildOptions in encoding/json's form (which lost
// the fields depot-go lacks).
func (o *Options) UnmarshalJSON(b []byte) error {
	var items []json.RawMessage
	if err := json.Unmarshal(b, &items); err != nil {
		return err
	}
	if items == nil {
		*o = nil
		return nil
	}
	out := make(Options, len(items))
	for i, item := range items {
		m := &cliv1.BuildOptions{}
		if !bytes.HasPrefix(bytes.TrimSpace(item), []byte(`"`)) {
			if err := json.Unmarshal(item, m); err != nil {
				return fmt.Errorf("build options %d: %w", i, err)
			}
			out[i] = m
			continue
		}
		var enc string
		if err := json.Unmarshal(item, &enc); err != nil {
			return fmt.Errorf("build options %d: %w", i, err)
		}
		wire, err := base64.StdEncoding.DecodeString(enc)
		if err != nil {
			return fmt.Errorf("build options %d: %w", i, err)
		}
		if err := proto.Unmarshal(wire, m); err != nil {
			return fmt.Errorf("build options %d: %w", i, err)
		}
		out[i] = m
	}
	*o = out
	return nil
}
