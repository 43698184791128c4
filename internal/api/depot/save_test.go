package depot

import (
	"encoding/base64"
	"slices"
	"testing"

	cliv1 "github.com/depot/depot-go/proto/depot/cli/v1"

	"github.com/kiln-dev/kiln/internal/depotext"
)

func TestSaveRequest(t *testing.T) {
	tagged := &cliv1.BuildOptions{}
	depotext.SetSaveTags(tagged, []string{"v1", "latest"})
	cases := []struct {
		opts     []*cliv1.BuildOptions
		save     bool
		wantTags []string
	}{
		{nil, false, nil},
		{[]*cliv1.BuildOptions{{Command: cliv1.Command_COMMAND_BUILD}}, false, nil},
		{[]*cliv1.BuildOptions{{Save: true}}, true, nil},
		{[]*cliv1.BuildOptions{tagged}, true, []string{"v1", "latest"}}, // save tags imply save
		{[]*cliv1.BuildOptions{{}, {Save: true}, tagged}, true, []string{"v1", "latest"}},
		{[]*cliv1.BuildOptions{nil}, false, nil},
	}
	for i, c := range cases {
		save, tags := saveRequest(c.opts)
		if save != c.save || !slices.Equal(tags, c.wantTags) {
			t.Errorf("case %d: saveRequest = %v %q, want %v %q", i, save, tags, c.save, c.wantTags)
		}
	}
}

// The answer is what the depot CLI reads for a server's own registry.
func TestAddSaveTargets(t *testing.T) {
	res := &cliv1.CreateBuildResponse{}
	addSaveTargets(res, "127.0.0.1:7420", []string{"127.0.0.1:7420/p:b1", "127.0.0.1:7420/p:v1"}, "kiln_bld_secret")
	if len(res.AdditionalTags) != 2 || res.AdditionalTags[0].Tag != "127.0.0.1:7420/p:b1" || !res.AdditionalTags[0].Push || !res.AdditionalTags[1].Push {
		t.Errorf("additional_tags = %v", res.AdditionalTags)
	}
	if len(res.AdditionalCredentials) != 1 || res.AdditionalCredentials[0].Host != "127.0.0.1:7420" {
		t.Fatalf("additional_credentials = %v", res.AdditionalCredentials)
	}
	raw, err := base64.StdEncoding.DecodeString(res.AdditionalCredentials[0].Token)
	if err != nil || string(raw) != "x-token:kiln_bld_secret" {
		t.Errorf("credential token decodes to %q, %v", raw, err)
	}
}
