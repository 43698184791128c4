package platform

import (
	"testing"

	"github.com/kiln-dev/kiln/internal/errdefs"
)

func TestParse(t *testing.T) {
	for in, want := range map[string]string{
		"linux/amd64": "linux/amd64", "amd64": "linux/amd64", "x86_64": "linux/amd64",
		"arm64": "linux/arm64", "aarch64": "linux/arm64", "linux/arm64/v8": "linux/arm64",
		"linux/arm": "linux/arm/v7", " linux/386 ": "linux/386",
	} {
		p, err := Parse(in)
		if err != nil || p.String() != want {
			t.Errorf("Parse(%q) = %v, %v; want %s", in, p, err, want)
		}
	}
	for _, bad := range []string{"", "linux/amd64,linux/arm64", "linux/", "a/b/c/d", "😀"} {
		if _, err := Parse(bad); !errdefs.IsInvalid(err) {
			t.Errorf("Parse(%q) = %v; want invalid", bad, err)
		}
	}
}

func TestParseList(t *testing.T) {
	ps, err := ParseList("linux/amd64, arm64,linux/amd64,linux/arm/v7")
	if err != nil {
		t.Fatal(err)
	}
	if got := Strings(ps); len(got) != 3 || got[0] != "linux/amd64" || got[1] != "linux/arm64" || got[2] != "linux/arm/v7" {
		t.Fatalf("ParseList = %v", got)
	}
	if ps, err := ParseList(" "); err != nil || ps != nil {
		t.Fatalf("empty: %v, %v", ps, err)
	}
	for _, bad := range []string{"linux/amd64,,linux/arm64", "linux/riscv64", "windows/amd64"} {
		if _, err := ParseList(bad); !errdefs.IsInvalid(err) {
			t.Errorf("ParseList(%q) = %v; want invalid", bad, err)
		}
	}
}

func TestBuilder(t *testing.T) {
	for in, want := range map[string]Platform{"linux/386": AMD64, "linux/arm/v7": ARM64, "linux/amd64/v3": AMD64} {
		p, _ := Parse(in)
		if b, ok := p.Builder(); !ok || b != want {
			t.Errorf("%s.Builder() = %v, %v", in, b, ok)
		}
	}
	for in, want := range map[string]Platform{"": AMD64, "aarch64": ARM64, "linux/amd64": AMD64, "arm64/v8": ARM64, "linux/arm64/v8": ARM64, "x86_64": AMD64} {
		if b, err := ParseBuilder(in); err != nil || b != want {
			t.Errorf("ParseBuilder(%q) = %v, %v", in, b, err)
		}
	}
	if _, err := ParseBuilder("linux/arm/v7"); !errdefs.IsInvalid(err) {
		t.Errorf("ParseBuilder(arm/v7) = %v", err)
	}
	if d := (Platform{OS: "linux", Arch: "arm", Variant: "v7"}).Dir(); d != "linux_arm_v7" {
		t.Errorf("Dir = %s", d)
	}
}
