package cli

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
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
		{"runc with only the 2025 fixes", "runc version 1.2.8\n", nil, runcFloor, "warn"},
		{"runc 1.4", "runc version 1.4.9", nil, runcFloor, "warn"},
		{"fixed runc", "runc version 1.5.0\n", nil, runcFloor, "ok"},
		{"setup's runc", "runc version 1.5.3\ncommit: v1.5.3\nspec: 1.3.0\ngo: go1.26.8\nlibseccomp: 2.5.4", nil, runcFloor, "ok"},
		{"old buildkit", "buildkitd github.com/moby/buildkit v0.26.3 ", nil, buildkitFloor, "warn"},
		{"buildkit with the 2026 spring fixes only", "buildkitd github.com/moby/buildkit v0.31.2 abc", nil, buildkitFloor, "warn"},
		{"buildkit one patch short", "buildkitd github.com/moby/buildkit v0.34.1 abc", nil, buildkitFloor, "warn"},
		{"fixed buildkit", "buildkitd github.com/moby/buildkit v0.34.2 abc", nil, buildkitFloor, "ok"},
		{"newer buildkit", "buildkitd github.com/moby/buildkit v0.35.1 abc", nil, buildkitFloor, "ok"},
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

func TestRuncSeccomp(t *testing.T) {
	cases := []struct {
		name, out string
		err       error
		want      []string // levels
	}{
		{"with seccomp", "runc version 1.5.3\ncommit: v1.5.3\nspec: 1.3.0\ngo: go1.26.8\nlibseccomp: 2.5.4\n", nil, []string{"ok"}},
		{"without seccomp", "runc version 1.5.3\ncommit: v1.5.3\nspec: 1.3.0\ngo: go1.26.8\n", nil, []string{"warn"}},
		{"not runnable", "", errors.New("not found"), nil},
	}
	for _, c := range cases {
		d := &doctor{run: func(string, ...string) (string, error) { return c.out, c.err }}
		got := d.seccompCheck("/x/runc")
		if len(got) != len(c.want) {
			t.Errorf("%s: %d findings, want %d: %v", c.name, len(got), len(c.want), got)
			continue
		}
		for i, g := range got {
			if g.level != c.want[i] {
				t.Errorf("%s: level %s, want %s (%s)", c.name, g.level, c.want[i], g.detail)
			}
			if g.level != "ok" && !strings.Contains(g.fix, "hack/setup.sh") {
				t.Errorf("%s: the fix %q does not name hack/setup.sh", c.name, g.fix)
			}
		}
	}
}

// Builders find runc in buildkitd's directory first (kiln puts it first on
// buildkitd's PATH), so that is the runc doctor checks.
func TestRuncBesideBuildkitd(t *testing.T) {
	dir := t.TempDir()
	bk := filepath.Join(dir, "buildkitd")
	t.Setenv("PATH", t.TempDir()) // no runc on PATH either
	if got := runcBeside(bk); got != "runc" {
		t.Errorf("no runc beside buildkitd: got %q, want PATH's runc", got)
	}
	if err := os.WriteFile(filepath.Join(dir, "runc"), []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := runcBeside(bk); got != "runc" {
		t.Errorf("a non-executable runc beside buildkitd: got %q, want PATH's runc", got)
	}
	if err := os.Chmod(filepath.Join(dir, "runc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if got, want := runcBeside(bk), filepath.Join(dir, "runc"); got != want {
		t.Errorf("runc beside buildkitd: got %q, want %q", got, want)
	}
	t.Chdir(dir) // a bare name not on PATH has no directory, not the working one
	if got := runcBeside("buildkitd"); got != "runc" {
		t.Errorf("buildkitd not on PATH: got %q, want PATH's runc", got)
	}
}

// On the setup's bin/buildkitd and bin/runc, the version and seccomp checks
// are clean and each names the binary it looked at.
func TestDoctorCleanOnSetup(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"buildkitd", "runc"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	var ran []string
	d := &doctor{buildkitd: filepath.Join(dir, "buildkitd"), dataDir: t.TempDir(), apiURL: "http://127.0.0.1:1",
		run: func(name string, _ ...string) (string, error) {
			ran = append(ran, name)
			switch filepath.Base(name) {
			case "buildkitd":
				return "buildkitd github.com/moby/buildkit v0.34.2 abc\n", nil
			case "runc":
				return "runc version 1.5.3\ncommit: v1.5.3\nspec: 1.3.0\ngo: go1.26.8\nlibseccomp: 2.5.4\n", nil
			}
			return "", errors.New("unexpected " + name)
		}}
	for _, c := range d.checks(context.Background()) {
		switch c.name {
		case "buildkitd", "runc", "runc seccomp":
			if c.level != "ok" {
				t.Errorf("%s: %s %s → %s", c.name, c.level, c.detail, c.fix)
			}
		}
	}
	for _, name := range ran {
		if !strings.HasPrefix(name, dir) && name != "iptables" {
			t.Errorf("doctor ran %q, not the binary beside buildkitd", name)
		}
	}
}

// Without iptables kiln cannot apply its egress policy, and builders do not
// start: doctor says so, with the fix.
func TestDoctorEgressPolicy(t *testing.T) {
	d := &doctor{run: func(name string, _ ...string) (string, error) {
		if name == "iptables" {
			return "", errors.New(`exec: "iptables": executable file not found in $PATH`)
		}
		return "", nil
	}}
	for _, c := range d.networkChecks() {
		if c.name == "egress policy" && (c.level != "fail" || !strings.Contains(c.fix, "apt-get install iptables")) {
			t.Errorf("egress policy check: %+v", c)
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
