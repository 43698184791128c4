package s3test

import (
	"fmt"
	"os"
)

// StartStandalone runs versitygw outside a test binary (the benchmark's,
// bench/), with its bucket root and log in dir, on a loopback port: bin,
// or $KILN_VERSITYGW when set, as Start does. The caller stops it with
// Stop.
func StartStandalone(bin, dir string) (*Server, error) {
	if env := os.Getenv("KILN_VERSITYGW"); env != "" {
		bin = env
	}
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("versitygw: %w (hack/setup.sh --tests builds it into bin/)", err)
	}
	return launch(bin, dir)
}
