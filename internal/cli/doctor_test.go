package cli

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
)

func TestVersionFloors(t *testing.T) {
	d := &doctor{}
	cases := []struct {
		name, out string
		err       error
		floor     semver
		level     string
	}{
		{"debian runc", "runc version 1.1.5+ds1\ncommit: 1.1.5+ds1-1+deb12u1\nspec: 1.0.2-dev", nil, runcFloor, "warn"},
		{"fixed runc", "runc version 1.2.8\n", nil, runcFloor, "ok"},
		{"newer runc", "runc version 1.3.0", nil, runcFloor, "ok"},
		{"old buildkit", "buildkitd github.com/moby/buildkit v0.26.3 ", nil, buildkitFloor, "warn"},
		{"fixed buildkit", "buildkitd github.com/moby/buildkit v0.31.2 abc", nil, buildkitFloor, "ok"},
		{"missing", "", errors.New("not found"), runcFloor, "fail"},
		{"garbage", "hello", nil, runcFloor, "warn"},
	}
	for _, c := range cases {
		d.run = func(string, ...string) (string, error) { return c.out, c.err }
		got := d.versionCheck("x", "x", c.floor, "risk", "fix")
		if got.level != c.level {
			t.Errorf("%s: level %s, want %s (%s)", c.name, got.level, c.level, got.detail)
		}
		if got.level != "ok" && got.fix == "" {
			t.Errorf("%s: a finding without what to do", c.name)
		}
	}
}

func TestDoctorServerUnreachable(t *testing.T) {
	d := &doctor{apiURL: "http://127.0.0.1:1", run: func(string, ...string) (string, error) { return "v9.9.9", nil }, dataDir: t.TempDir()}
	var buf bytes.Buffer
	if !printChecks(&buf, d.checks(context.Background())) {
		t.Errorf("an unreachable server is not a failure:\n%s", buf.String())
	}
	if !strings.Contains(buf.String(), "kiln serve") {
		t.Errorf("no advice for the unreachable server:\n%s", buf.String())
	}
}
