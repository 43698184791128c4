// Package retention reads and writes how long saved images are kept: a
// number of days ("14d") or a Go duration ("36h"). It is pure so that both
// the client commands and the registry can use it; it must not depend on
// any other kiln package.
package retention

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Max bounds a project's retention.
const Max = 10 * 365 * 24 * time.Hour

// Parse reads a retention: a number of days ("14d") or a Go duration
// ("36h", "90m", "30s"); "0" means the default.
func Parse(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.ParseFloat(days, 64)
		if err != nil || !(n >= 0 && n <= Max.Hours()/24) {
			return 0, fmt.Errorf("retention %q: want days like 14d or a duration like 36h", s)
		}
		return time.Duration(n * float64(24*time.Hour)), nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 || d > Max {
		return 0, fmt.Errorf("retention %q: want days like 14d or a duration like 36h", s)
	}
	return d, nil
}

// Format writes a retention the way Parse reads it, in days when whole.
func Format(d time.Duration) string {
	if d > 0 && d%(24*time.Hour) == 0 {
		return strconv.FormatInt(int64(d/(24*time.Hour)), 10) + "d"
	}
	return d.String()
}
