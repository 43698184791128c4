package e2e

import (
	"strings"
	"testing"
)

// Bad input gets a clear error naming the problem and changes nothing: the
// server keeps serving and a good build still succeeds afterwards.
func TestBadInput(t *testing.T) {
	t.Parallel()
	s := sharedServer(t)
	proj := s.createProject(t, "bad-input")
	good := writeContext(t, map[string]string{"Dockerfile": baseStages + "FROM busybox AS one\nRUN echo one > /one\n"})
	syntax := writeContext(t, map[string]string{"Dockerfile": baseStages + "FROM busybox\nRUNN echo typo\n"})
	empty := t.TempDir()

	cases := []struct {
		name string
		dir  string
		env  []string
		args []string
		want string // in stderr
	}{
		{"unknown project", good, nil, []string{"build", "--project", "nosuchproject", "."}, `project "nosuchproject": not found`},
		{"bad token", good, []string{"KILN_TOKEN=kiln_org_forged"}, []string{"build", "--project", proj, "."}, "invalid or expired token"},
		{"garbage token", good, []string{"KILN_TOKEN=not-a-token"}, []string{"projects", "list"}, "invalid or expired token"},
		{"missing Dockerfile", empty, nil, []string{"build", "--project", proj, "."}, "Dockerfile not found"},
		{"missing -f", good, nil, []string{"build", "--project", proj, "-f", "nope.Dockerfile", "."}, "not found"},
		{"missing context", good, nil, []string{"build", "--project", proj, "./does-not-exist"}, "does-not-exist"},
		{"Dockerfile syntax error", syntax, nil, []string{"build", "--project", proj, "--progress", "plain", "."}, "unknown instruction: RUNN"},
		{"unknown target", good, nil, []string{"build", "--project", proj, "--target", "nosuchstage", "--progress", "plain", "."}, "nosuchstage"},
		{"malformed build-arg", good, nil, []string{"build", "--project", proj, "--build-arg", "=value", "."}, "--build-arg"},
		{"malformed secret", good, nil, []string{"build", "--project", proj, "--secret", "src=/etc/hostname", "."}, "--secret"},
		{"secret source missing", good, nil, []string{"build", "--project", proj, "--secret", "id=x,src=/nonexistent/file", "."}, "--secret"},
		{"unknown output type", good, nil, []string{"build", "--project", proj, "-o", "type=bogus,dest=x", "."}, "type=bogus"},
		{"malformed output", good, nil, []string{"build", "--project", proj, "-o", "type=local", "."}, "dest"},
		{"bad tag", good, nil, []string{"build", "--project", proj, "-t", "UPPER:case:bad", "."}, "-t"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := s.kiln(t, c.dir, c.env, c.args...)
			if r.Err == nil {
				t.Fatalf("kiln %v succeeded; want an error containing %q", c.args, c.want)
			}
			if !strings.Contains(r.Stderr, c.want) {
				t.Errorf("kiln %v: stderr does not name the problem (%q):\n%s", c.args, c.want, tail(r.Stderr, 2000))
			}
			if strings.Contains(r.Stderr, "panic") || strings.Contains(r.Stderr, "internal error") {
				t.Errorf("kiln %v: internal failure:\n%s", c.args, r.Stderr)
			}
		})
	}

	// A failing step: non-zero exit, BuildKit's error and the failing step.
	failing := writeContext(t, map[string]string{"Dockerfile": baseStages + "FROM busybox\nRUN echo about to fail && exit 7\n"})
	r := s.kiln(t, failing, nil, "build", "--project", proj, "--progress", "plain", ".")
	if r.Err == nil || !strings.Contains(r.Stderr, "exit code: 7") || !strings.Contains(r.Stderr, "RUN echo about to fail") {
		t.Errorf("failing RUN: err=%v stderr:\n%s", r.Err, tail(r.Stderr, 2000))
	}
	if st := s.buildStatusByIndex(t, proj, 0); st.String() != "BUILD_STATUS_FAILED" {
		t.Errorf("failing build recorded as %v", st)
	}
	// Its step, error and log are stored on the server.
	id := s.latestBuild(t, proj)
	var failed string
	for _, st := range s.steps(t, proj, id) {
		if strings.Contains(st.Name, "about to fail") {
			failed = st.Digest
			if st.GetError() == "" {
				t.Errorf("stored failing step has no error")
			}
		}
	}
	if failed == "" {
		t.Fatalf("failing step not stored")
	}
	if logs := s.stepLogs(t, proj, id, failed); !strings.Contains(logs, "about to fail") {
		t.Errorf("stored log of the failing step = %q", logs)
	}

	// None of it affected the server: a good build still works.
	s.mustKiln(t, good, "build", "--project", proj, "--progress", "plain", ".")
}
