package cli

import (
	"bytes"
	"encoding/json"
	"slices"
	"strings"
	"testing"

	corev1 "buf.build/gen/go/depot/api/protocolbuffers/go/depot/core/v1"
	"google.golang.org/protobuf/types/known/timestamppb"

	kilnv1 "github.com/kiln-dev/kiln/gen/kiln/v1"
)

func TestEgressList(t *testing.T) {
	for _, tc := range []struct {
		in      []string
		want    []string
		wantErr string
	}{
		{[]string{"10.9.0.0/16"}, []string{"10.9.0.0/16"}, ""},
		{[]string{"10.9.0.0/16", " fd00:9::/64 "}, []string{"10.9.0.0/16", "fd00:9::/64"}, ""},
		{[]string{"none"}, []string{}, ""},
		{[]string{"NONE"}, []string{}, ""},
		{[]string{"none", "10.9.0.0/16"}, nil, "cannot be combined"},
		{[]string{""}, nil, "empty value"},
	} {
		got, err := egressList(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("egressList(%q) = %q, %v; want an error with %q", tc.in, got, err, tc.wantErr)
			}
			continue
		}
		if err != nil || !slices.Equal(got, tc.want) || got == nil {
			t.Errorf("egressList(%q) = %#v, %v; want %#v", tc.in, got, err, tc.want)
		}
	}
}

func TestPrintProjectEgress(t *testing.T) {
	p := &corev1.Project{ProjectId: "k3v9x0ab2mqd", Name: "web", CreatedAt: timestamppb.Now()}
	net := &kilnv1.ProjectNetwork{ProjectId: p.ProjectId, EgressAllow: []string{"10.9.0.0/16", "fd00:9::/64"}}
	var b bytes.Buffer
	printProjects(&b, false, false, net, p)
	if !strings.Contains(b.String(), "EGRESS ALLOW") || !strings.Contains(b.String(), "10.9.0.0/16,fd00:9::/64") {
		t.Errorf("table:\n%s", b.String())
	}
	b.Reset()
	printProjects(&b, false, false, &kilnv1.ProjectNetwork{ProjectId: p.ProjectId}, p)
	if lines := strings.Split(strings.TrimSpace(b.String()), "\n"); !strings.HasSuffix(lines[1], "none") {
		t.Errorf("no allow-list shows as none:\n%s", b.String())
	}
	b.Reset()
	printProjects(&b, false, true, &kilnv1.ProjectNetwork{ProjectId: p.ProjectId}, p)
	var got map[string]any
	if err := json.Unmarshal(b.Bytes(), &got); err != nil || got["project_id"] != p.ProjectId || got["egress_allow"] == nil {
		t.Errorf("JSON %s: %v (want project fields and an egress_allow list)", b.String(), err)
	}
	b.Reset()
	printProjects(&b, false, false, nil, p)
	if strings.Contains(b.String(), "EGRESS") {
		t.Errorf("a list of projects shows no egress column:\n%s", b.String())
	}
}
