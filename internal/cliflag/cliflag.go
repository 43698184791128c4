// Package cliflag holds the flag defaults and values that both the client
// commands (internal/cli) and `kiln serve` (cmd/kiln) use. It must not
// depend on server code: internal/cli imports it.
package cliflag

import (
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/kiln-dev/kiln/internal/retention"
)

// EnvOr is the environment variable key, or def when it is unset or empty.
func EnvOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// DefaultBuildkitd finds buildkitd next to the kiln binary, then on PATH.
func DefaultBuildkitd() string {
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), "buildkitd")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if p, err := exec.LookPath("buildkitd"); err == nil {
		return p
	}
	return "buildkitd"
}

// Retention is a pflag.Value reading "14d" or a Go duration into D
// (internal/retention).
type Retention struct{ D *time.Duration }

func (v Retention) String() string {
	if v.D == nil {
		return ""
	}
	return retention.Format(*v.D)
}

func (v Retention) Set(s string) error {
	d, err := retention.Parse(s)
	if err != nil {
		return err
	}
	*v.D = d
	return nil
}

func (Retention) Type() string { return "duration" }
