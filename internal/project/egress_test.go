package project_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/audit"
	"github.com/kiln-dev/kiln/internal/auth"
	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/project"
)

func TestNormalizeEgressAllow(t *testing.T) {
	good := []struct {
		in   []string
		want []string
	}{
		{nil, nil},
		{[]string{}, nil},
		{[]string{"10.9.0.0/16"}, []string{"10.9.0.0/16"}},
		{[]string{" 192.168.7.0/24 "}, []string{"192.168.7.0/24"}},
		{[]string{"10.199.7.2/32"}, []string{"10.199.7.2/32"}},
		{[]string{"100.64.0.0/11"}, []string{"100.64.0.0/11"}},
		// IPv6, written in any case and zero-compression, stored canonically.
		{[]string{"FD00:9:0:0::/64"}, []string{"fd00:9::/64"}},
		{[]string{"2001:DB8::/32", "fd00::1/128"}, []string{"2001:db8::/32", "fd00::1/128"}},
		// Order is kept; a repeat (after canonicalising) is dropped.
		{[]string{"172.16.0.0/12", "10.0.0.0/8", "172.16.0.0/12"}, []string{"172.16.0.0/12", "10.0.0.0/8"}},
		{[]string{"fd00:9::/64", "fd00:9:0::/64"}, []string{"fd00:9::/64"}},
	}
	for _, tc := range good {
		got, err := project.NormalizeEgressAllow(tc.in)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("NormalizeEgressAllow(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}

	many := make([]string, project.MaxEgressAllow+1)
	for i := range many {
		many[i] = fmt.Sprintf("10.%d.0.0/16", i)
	}
	if got, err := project.NormalizeEgressAllow(many[:project.MaxEgressAllow]); err != nil || len(got) != project.MaxEgressAllow {
		t.Errorf("%d entries: %d, %v; want accepted", project.MaxEgressAllow, len(got), err)
	}
	bad := []struct {
		in      []string
		mention string // the error must say this
	}{
		// Malformed.
		{[]string{"banana"}, `"banana"`},
		{[]string{"10.9.0.0"}, "10.9.0.0/32"},
		{[]string{"fd00::1"}, "fd00::1/128"},
		{[]string{"10.9.0.0/33"}, `"10.9.0.0/33"`},
		{[]string{"10.9.0.0/-1"}, "10.9.0.0/-1"},
		{[]string{"10.9.0/16"}, "10.9.0/16"},
		{[]string{"010.9.0.0/16"}, "010.9.0.0/16"},
		{[]string{"10.9.0.0/16/8"}, "10.9.0.0/16/8"},
		{[]string{"fe80::1%eth0/64"}, "fe80::1%eth0/64"},
		{[]string{"http://10.9.0.0/16"}, "http://10.9.0.0/16"},
		{[]string{""}, "empty"},
		{[]string{"10.9.0.0/16", "  "}, "empty"},
		{[]string{"10.9.0.0/16\n10.8.0.0/16"}, "10.9.0.0/16"},
		{[]string{strings.Repeat("1", 500)}, "…"},
		// Host bits: refused, naming the entry and the masked form.
		{[]string{"10.9.1.0/16"}, "10.9.0.0/16"},
		{[]string{"192.168.7.1/24"}, `"192.168.7.1/24" has host bits set`},
		{[]string{"fd00:9::1/64"}, "did you mean fd00:9::/64"},
		// Too many.
		{many, fmt.Sprintf("at most %d", project.MaxEgressAllow)},
		// Everything: public destinations are reachable anyway.
		{[]string{"0.0.0.0/0"}, "public addresses are reachable"},
		{[]string{"::/0"}, "public addresses are reachable"},
		{[]string{"10.0.0.0/8", "0.0.0.0/0"}, `"0.0.0.0/0"`},
		// Ranges no entry may open, however they are spelled.
		{[]string{"0.0.0.0/1"}, "may never reach"},
		{[]string{"64.0.0.0/2"}, "loopback"},
		{[]string{"127.0.0.0/8"}, "loopback"},
		{[]string{"127.0.0.1/32"}, "loopback"},
		{[]string{"169.254.169.254/32"}, "metadata"},
		{[]string{"128.0.0.0/1"}, "link-local"},
		{[]string{"100.64.0.0/10"}, "100.100.100.200"},
		{[]string{"224.0.0.0/8"}, "multicast"},
		{[]string{"0.0.0.0/8"}, "this network"},
		{[]string{"::1/128"}, "loopback"},
		{[]string{"::/8"}, "::"},
		{[]string{"fe80::/64"}, "link-local"},
		{[]string{"fd00::/8"}, "fd00:ec2::254"},
		{[]string{"fd20:ce::/32"}, "fd20:ce::254"},
		{[]string{"ff02::/16"}, "multicast"},
		{[]string{"::ffff:10.0.0.0/104"}, "write it as IPv4"},
	}
	for _, tc := range bad {
		got, err := project.NormalizeEgressAllow(tc.in)
		if !errdefs.IsInvalid(err) {
			t.Errorf("NormalizeEgressAllow(%.80q) = %q, %v; want ErrInvalid", tc.in, got, err)
			continue
		}
		if !strings.Contains(err.Error(), tc.mention) {
			t.Errorf("NormalizeEgressAllow(%.80q): error %q does not mention %q", tc.in, err, tc.mention)
		}
	}
}

// memAudit keeps recorded audit events.
type memAudit struct{ events []audit.Entry }

func (m *memAudit) CreateAuditEvent(_ context.Context, e audit.Entry) error {
	m.events = append(m.events, e)
	return nil
}
func (m *memAudit) ListAuditEvents(context.Context, audit.EntryQuery) ([]audit.Entry, error) {
	return m.events, nil
}
func (m *memAudit) PruneAuditEvents(context.Context, time.Time, int) (int64, error) { return 0, nil }

func TestSetEgressAllow(t *testing.T) {
	ctx := context.Background()
	st := orgStore(t, "a", "b")
	now := time.Now()
	st.CreateOrganization(ctx, project.Organization{ID: "o2", Name: "o2", CreatedAt: now})
	events := &memAudit{}
	svc := &project.Service{Store: st, Audit: audit.New(events, audit.Config{}, nil)}
	org := auth.Principal{Kind: auth.TokenOrg, OrgID: "o", TokenID: "tok_admin"}

	proj, err := svc.SetEgressAllow(ctx, org, "a", []string{"10.9.0.0/16", "FD00:9::/64"})
	if want := []string{"10.9.0.0/16", "fd00:9::/64"}; err != nil || !slices.Equal(proj.EgressAllow, want) {
		t.Fatalf("SetEgressAllow = %q, %v; want %q", proj.EgressAllow, err, want)
	}
	if got, _ := st.GetProject(ctx, "a"); !slices.Equal(got.EgressAllow, proj.EgressAllow) {
		t.Errorf("stored %q, returned %q", got.EgressAllow, proj.EgressAllow)
	}
	if got, _ := st.GetProject(ctx, "b"); len(got.EgressAllow) != 0 {
		t.Errorf("project b allows %q after a's list was set", got.EgressAllow)
	}
	if len(events.events) != 1 {
		t.Fatalf("%d audit events, want 1", len(events.events))
	}
	if e := events.events[0]; e.Kind != audit.KindProjectEgressChanged || e.ProjectID != "a" || e.Actor != "tok_admin" ||
		e.Detail["egress_allow"] != "10.9.0.0/16,fd00:9::/64" || e.Detail["previous"] != "" {
		t.Errorf("audit event = %+v", e)
	}

	// Project members read it; nobody but the organization changes it.
	member := auth.Principal{Kind: auth.TokenProject, OrgID: "o", ProjectID: "a"}
	if got, err := svc.EgressAllow(ctx, member, "a"); err != nil || len(got.EgressAllow) != 2 {
		t.Errorf("project token reading its list: %q, %v", got.EgressAllow, err)
	}
	if _, err := svc.EgressAllow(ctx, member, "b"); !errdefs.IsNotFound(err) {
		t.Errorf("project token reading another project's list: %v, want NotFound", err)
	}
	for _, p := range []auth.Principal{
		member,
		{Kind: auth.TokenOIDC, OrgID: "o", ProjectIDs: []string{"a"}},
		{Kind: auth.TokenBuild, OrgID: "o", ProjectID: "a", BuildID: "b1"},
		{Kind: auth.TokenPull, OrgID: "o", ProjectID: "a"},
		{Kind: auth.TokenOrg, OrgID: "o2"},
	} {
		_, err := svc.SetEgressAllow(ctx, p, "a", []string{"10.8.0.0/16"})
		if !errors.Is(err, errdefs.ErrPermission) && !errdefs.IsNotFound(err) {
			t.Errorf("%s token of %s changing the list: %v; want PermissionDenied or NotFound", p.Kind, p.OrgID, err)
		}
	}
	if got, _ := st.GetProject(ctx, "a"); !slices.Equal(got.EgressAllow, []string{"10.9.0.0/16", "fd00:9::/64"}) {
		t.Errorf("after refused changes the list is %q", got.EgressAllow)
	}

	// Invalid input changes nothing; a missing project is NotFound.
	if _, err := svc.SetEgressAllow(ctx, org, "a", []string{"10.8.0.0/16", "0.0.0.0/0"}); !errdefs.IsInvalid(err) {
		t.Errorf("0.0.0.0/0: %v", err)
	}
	if got, _ := st.GetProject(ctx, "a"); len(got.EgressAllow) != 2 {
		t.Errorf("a refused list was partly stored: %q", got.EgressAllow)
	}
	if _, err := svc.SetEgressAllow(ctx, org, "missing", []string{"10.8.0.0/16"}); !errdefs.IsNotFound(err) {
		t.Errorf("missing project: %v", err)
	}

	// An empty list clears it, and the audit event says what it was.
	if proj, err := svc.SetEgressAllow(ctx, org, "a", nil); err != nil || len(proj.EgressAllow) != 0 {
		t.Fatalf("clear: %q, %v", proj.EgressAllow, err)
	}
	if got, _ := st.GetProject(ctx, "a"); len(got.EgressAllow) != 0 {
		t.Errorf("after clearing: %q", got.EgressAllow)
	}
	if n := len(events.events); n != 2 || events.events[1].Detail["previous"] != "10.9.0.0/16,fd00:9::/64" || events.events[1].Detail["entries"] != "0" {
		t.Errorf("audit after clearing: %+v", events.events)
	}
}
