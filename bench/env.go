package main

import (
	"context"
	"iter"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/kiln-dev/kiln/internal/kilntest"
)

// checkComponents lists what the runner needs and is missing.
func checkComponents(buildkitd, buildctl string) []string {
	var missing []string
	for _, f := range []struct{ path, hint string }{
		{buildkitd, "run hack/setup.sh"},
		{buildctl, "run hack/setup.sh"},
		// Both kiln's builders and the baseline run the runc beside
		// buildkitd (first on buildkitd's PATH): setup's, built with seccomp.
		{filepath.Join(filepath.Dir(buildkitd), "runc"), "run hack/setup.sh"},
		{"/bin/busybox", "apt-get install busybox-static"},
	} {
		if _, err := os.Stat(f.path); err != nil {
			missing = append(missing, f.path+" ("+f.hint+")")
		}
	}
	if os.Geteuid() != 0 {
		missing = append(missing, "root (builders run rootful buildkitd)")
	}
	return missing
}

// buildKiln compiles the tree's kiln binaries into dir, so the numbers
// are those of the code in the tree, not of a stale bin/kiln.
func buildKiln(ctx context.Context, root, dir string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	return kilntest.BuildKiln(ctx, root, dir)
}

// cleanEnv is the runner's environment without anything that would point a
// client elsewhere (KILN_*, DEPOT_*, BUILDKIT_HOST, DOCKER_HOST); callers
// append their own settings.
func cleanEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "KILN_") || strings.HasPrefix(k, "DEPOT_") || k == "BUILDKIT_HOST" ||
			k == "DOCKER_HOST" || k == "DOCKER_CONFIG" || k == "DOCKER_CONTEXT" || k == "BUILDX_BUILDER" {
			continue
		}
		env = append(env, kv)
	}
	return append(env, extra...)
}

// sortedMap ranges over m in key order (stable command lines).
func sortedMap(m map[string]string) iter.Seq2[string, string] {
	return func(yield func(string, string) bool) {
		for _, k := range slices.Sorted(maps.Keys(m)) {
			if !yield(k, m[k]) {
				return
			}
		}
	}
}
