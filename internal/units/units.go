// Package units formats sizes for people: one way everywhere kiln prints
// bytes (progress lines, quotas, log budgets, resource peaks).
package units

import "fmt"

// Bytes is n in binary units with one decimal, as "40.0 MiB", "1.5 GiB";
// below 1 KiB, as "512 B".
func Bytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	v, i := float64(n)/unit, 0
	for v >= unit && i < 4 {
		v /= unit
		i++
	}
	return fmt.Sprintf("%.1f %s", v, []string{"KiB", "MiB", "GiB", "TiB", "PiB"}[i])
}
