package main

import (
	"slices"
	"testing"
)

func TestBakeOverrides(t *testing.T) {
	cases := []struct {
		bf   bakeFlags
		want []string
	}{
		{bakeFlags{sets: []string{"app.tags=x"}}, []string{"app.tags=x"}},
		{bakeFlags{push: true, load: true, noCache: true}, []string{"*.push=true", "*.load=true", "*.no-cache=true"}},
		{bakeFlags{provenance: "max"}, []string{"*.attest=type=provenance,mode=max"}},
		{bakeFlags{provenance: "false"}, []string{"*.attest=type=provenance,disabled=true"}},
		{bakeFlags{provenance: "true"}, []string{"*.attest=type=provenance,disabled=false"}},
		{bakeFlags{provenance: "mode=min,builder-id=x"}, []string{"*.attest=type=provenance,mode=min,builder-id=x"}},
	}
	for _, c := range cases {
		if got := bakeOverrides(&c.bf); !slices.Equal(got, c.want) {
			t.Errorf("bakeOverrides(%+v) = %v, want %v", c.bf, got, c.want)
		}
	}
	bf := bakeFlags{sets: []string{"a.tags=1"}, push: true}
	bakeOverrides(&bf)
	if len(bf.sets) != 1 {
		t.Errorf("bakeOverrides changed --set: %v", bf.sets)
	}
}
