package main

import (
	"math"
	"slices"
)

// Stat summarises the samples of one side of a measurement.
type Stat struct {
	N       int       `json:"n"`
	Median  float64   `json:"median"`
	P90     float64   `json:"p90"`
	Min     float64   `json:"min"`
	Max     float64   `json:"max"`
	Samples []float64 `json:"samples"`
}

// summarize computes median and p90 (nearest rank: the smallest sample
// with at least 90 % of the samples at or below it) of xs; nil for none.
func summarize(xs []float64) *Stat {
	if len(xs) == 0 {
		return nil
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	med := s[n/2]
	if n%2 == 0 {
		med = (s[n/2-1] + s[n/2]) / 2
	}
	p90 := s[int(math.Ceil(0.9*float64(n)))-1]
	return &Stat{N: n, Median: med, P90: p90, Min: s[0], Max: s[n-1], Samples: xs}
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}
