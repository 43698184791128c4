package runner

import (
	"strings"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/errdefs"
)

func TestPickProjectIsFair(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	// "busy" queued ten builds first; "late" queued one after them all.
	queues := map[string][]queued{"late": {{id: "l1", created: at(100)}}}
	for i := range 10 {
		queues["busy"] = append(queues["busy"], queued{id: string(rune('a' + i)), created: at(i)})
	}
	running := map[string]int{}
	var order []string
	for len(order) < 4 {
		p := pickProject(queues, running, 2)
		if p == "" {
			break
		}
		order = append(order, p)
		queues[p] = queues[p][1:]
		if len(queues[p]) == 0 {
			delete(queues, p)
		}
		running[p]++
	}
	// busy starts its oldest build; then late (fewer running) goes before
	// busy's second; then busy fills its per-project limit and stops.
	if got := strings.Join(order, ","); got != "busy,late,busy" {
		t.Errorf("start order = %s, want busy,late,busy (then busy waits at its limit)", got)
	}
	if p := pickProject(queues, running, 2); p != "" {
		t.Errorf("a project at its limit was picked: %s", p)
	}
	running["busy"]--
	if p := pickProject(queues, running, 2); p != "busy" {
		t.Errorf("after a busy build ended, picked %q", p)
	}
}

func TestSpecNormalize(t *testing.T) {
	bad := []struct {
		spec    Spec
		secrets map[string]string
		want    string
	}{
		{Spec{}, nil, "context_key is required"},
		{Spec{ContextKey: "k", Dockerfile: "/etc/Dockerfile"}, nil, "inside the context"},
		{Spec{ContextKey: "k", Dockerfile: "../Dockerfile"}, nil, "leaves the context"},
		{Spec{ContextKey: "k", Dockerfile: "a/../../x"}, nil, "leaves the context"},
		{Spec{ContextKey: "k", Target: "bad target"}, nil, "not a valid stage"},
		{Spec{ContextKey: "k", BuildArgs: map[string]string{"1X": "v"}}, nil, "build arg"},
		{Spec{ContextKey: "k", Platforms: []string{"windows/amd64"}}, nil, "platform"},
		{Spec{ContextKey: "k"}, map[string]string{"bad id!": "v"}, "secret id"},
		{Spec{ContextKey: "k"}, map[string]string{"big": strings.Repeat("x", maxSecretBytes+1)}, "at most"},
	}
	for _, tc := range bad {
		err := tc.spec.normalize(tc.secrets)
		if !errdefs.IsInvalid(err) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: err = %v, want invalid naming %q", tc.spec, err, tc.want)
		}
	}
	s := Spec{ContextKey: "k", Dockerfile: "./docker//app.Dockerfile", Platforms: []string{"arm64", "linux/arm64", "amd64"}}
	if err := s.normalize(map[string]string{"b": "1", "a": "2"}); err != nil {
		t.Fatal(err)
	}
	if s.Dockerfile != "docker/app.Dockerfile" || strings.Join(s.Platforms, ",") != "linux/arm64,linux/amd64" || strings.Join(s.SecretIDs, ",") != "a,b" {
		t.Errorf("normalized = %+v", s)
	}
	def := &Spec{ContextKey: "k"}
	def.normalize(nil)
	if def.Dockerfile != "Dockerfile" || strings.Join(def.Platforms, ",") != "linux/amd64" {
		t.Errorf("defaults = %+v", def)
	}
}

func TestRefs(t *testing.T) {
	const host = "127.0.0.1:7420"
	got, err := refs(host, "p1", "b1", []string{"v1", "app:2", "org/app", host + "/p1/x:3", "v1", "reg.example.com/a:1"}, []string{"reg.example.com"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{host + "/p1:b1", host + "/p1:v1", host + "/p1/app:2", host + "/p1/org/app:latest", host + "/p1/x:3", "reg.example.com/a:1"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("refs =\n%v\nwant\n%v", got, want)
	}
	for _, bad := range []struct{ tag, want string }{
		{host + "/p2:v1", "only to repositories of its project"},
		{host + "/p10/x:1", "only to repositories of its project"},
		{"docker.io/library/alpine:3", "no credentials for registry docker.io"},
		{"ghcr.io/x/y:1", "no credentials"},
		{"UPPER CASE", "not a tag"},
		{"app@sha256:" + strings.Repeat("a", 64), "not by digest"},
	} {
		if _, err := refs(host, "p1", "b1", []string{bad.tag}, nil); !errdefs.IsInvalid(err) || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("tag %q: err = %v, want invalid naming %q", bad.tag, err, bad.want)
		}
	}
	if _, err := refs("", "p1", "b1", nil, nil); err == nil {
		t.Error("no registry: want an error")
	}
}

func TestSealerBindsBuild(t *testing.T) {
	s, err := newSealer([]byte(strings.Repeat("k", 32)))
	if err != nil {
		t.Fatal(err)
	}
	sealed, err := s.seal("b1", map[string]string{"token": "s3cr3t"})
	if err != nil || strings.Contains(sealed, "s3cr3t") {
		t.Fatalf("sealed = %q, %v", sealed, err)
	}
	got, err := s.open("b1", sealed)
	if err != nil || string(got["token"]) != "s3cr3t" {
		t.Errorf("open = %v, %v", got, err)
	}
	if _, err := s.open("b2", sealed); err == nil {
		t.Error("secrets sealed for b1 opened for b2")
	}
	if v, _ := s.seal("b1", nil); v != "" {
		t.Errorf("no secrets sealed to %q", v)
	}
}

func TestQueuedListsAProjectsQueueInOrder(t *testing.T) {
	r := &Runner{queues: map[string][]queued{"p": {{id: "b1"}, {id: "b2"}}, "q": {{id: "c1"}}}}
	if got := strings.Join(r.Queued("p"), ","); got != "b1,b2" {
		t.Errorf("Queued(p) = %s", got)
	}
	if got := r.Queued("none"); len(got) != 0 {
		t.Errorf("Queued(none) = %v", got)
	}
}
