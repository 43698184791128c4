package main

import (
	"fmt"

	units "github.com/docker/go-units"
)

// byteSize is a size flag in bytes that also takes binary units: "256MiB",
// "4GiB", "4g", "512m"; "0" or "" is 0.
type byteSize struct{ p *int64 }

func (b byteSize) String() string {
	if b.p == nil || *b.p == 0 {
		return "0"
	}
	return units.BytesSize(float64(*b.p))
}

func (b byteSize) Set(s string) error {
	if s == "" {
		*b.p = 0
		return nil
	}
	n, err := units.RAMInBytes(s)
	if err != nil || n < 0 {
		return fmt.Errorf("%q: want a size such as 512MiB or 4GiB, or 0 for none", s)
	}
	*b.p = n
	return nil
}

func (b byteSize) Type() string { return "size" }
