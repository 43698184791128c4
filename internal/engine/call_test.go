package engine

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/internal/errdefs"
	"github.com/kiln-dev/kiln/internal/kilntest"
	"github.com/moby/buildkit/client"
	"github.com/moby/buildkit/frontend/subrequests/lint"
	"github.com/moby/buildkit/solver/pb"
)

// lintResponse is a check result as the Dockerfile frontend answers it.
func lintResponse(t *testing.T, res lint.LintResults, status string) *client.SolveResponse {
	t.Helper()
	dt, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	return &client.SolveResponse{ExporterResponse: map[string]string{"result.json": string(dt), "result.statuscode": status, "version": "1.0.0"}}
}

func TestPrintCallResultCheck(t *testing.T) {
	src := &pb.SourceInfo{Filename: "Dockerfile", Language: "Dockerfile", Data: []byte("FROM scratch AS base\nFROM base as final\nCOPY x /\n")}
	warn := lint.LintResults{Sources: []*pb.SourceInfo{src}, Warnings: []lint.Warning{{
		RuleName: "FromAsCasing", URL: "https://docs.docker.com/go/dockerfile/rule/from-as-casing/",
		Detail:   "'as' and 'FROM' keywords' casing do not match",
		Location: &pb.Location{SourceIndex: 0, Ranges: []*pb.Range{{Start: &pb.Position{Line: 2}, End: &pb.Position{Line: 2}}}},
	}}}
	r := &Request{call: &callFunc{name: "lint"}}

	var out bytes.Buffer
	code, err := PrintCallResult(&out, r, lintResponse(t, warn, "1"))
	if err != nil || code != 1 {
		t.Fatalf("code %d err %v", code, err)
	}
	for _, want := range []string{"Check complete, 1 warning has been found!", "WARNING: FromAsCasing - https://", "Dockerfile:2", ">>> FROM base as final"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}

	r.call.ignoreStatus = true
	if code, err := PrintCallResult(&bytes.Buffer{}, r, lintResponse(t, warn, "1")); err != nil || code != 0 {
		t.Errorf("ignorestatus: code %d err %v", code, err)
	}

	out.Reset()
	r.call = &callFunc{name: "lint"}
	if code, err := PrintCallResult(&out, r, lintResponse(t, lint.LintResults{}, "0")); err != nil || code != 0 || !strings.Contains(out.String(), "no warnings found") {
		t.Errorf("clean: code %d err %v out %q", code, err, out.String())
	}

	broken := lint.LintResults{Sources: []*pb.SourceInfo{src}, Error: &lint.BuildError{Message: "dockerfile parse error on line 3: unknown instruction: COPYY",
		Location: pb.Location{SourceIndex: 0, Ranges: []*pb.Range{{Start: &pb.Position{Line: 3}, End: &pb.Position{Line: 3}}}}}}
	_, err = PrintCallResult(&bytes.Buffer{}, r, lintResponse(t, broken, "1"))
	if !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), "unknown instruction: COPYY") || !strings.Contains(err.Error(), "Dockerfile:3") {
		t.Errorf("parse error: %v", err)
	}

	// An error pointing at a source the result does not hold.
	broken.Sources = nil
	if _, err := PrintCallResult(&bytes.Buffer{}, r, lintResponse(t, broken, "1")); !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), "COPYY") {
		t.Errorf("parse error without source: %v", err)
	}

	// Warnings pointing nowhere (a custom frontend can answer anything)
	// are printed without source lines instead of crashing the client.
	odd := lint.LintResults{Warnings: []lint.Warning{{RuleName: "NoLocation"}, {RuleName: "BadIndex", Location: &pb.Location{SourceIndex: 7}}}}
	out.Reset()
	r.call = &callFunc{name: "lint"}
	if code, err := PrintCallResult(&out, r, lintResponse(t, odd, "1")); err != nil || code != 1 ||
		!strings.Contains(out.String(), "NoLocation") || !strings.Contains(out.String(), "BadIndex") {
		t.Errorf("odd warnings: %d %v\n%s", code, err, out.String())
	}

	// A result this client cannot read falls back to the frontend's text.
	out.Reset()
	r.call = &callFunc{name: "outline"}
	resp := &client.SolveResponse{ExporterResponse: map[string]string{"result.json": "not json", "result.txt": "TARGET  final\n"}}
	if _, err := PrintCallResult(&out, r, resp); err != nil || out.String() != "TARGET  final\n" {
		t.Errorf("outline fallback: %q %v", out.String(), err)
	}
	out.Reset()
	r.call = &callFunc{name: "targets", format: "json"}
	resp.ExporterResponse["result.json"] = `{"targets":[]}`
	if _, err := PrintCallResult(&out, r, resp); err != nil || strings.TrimSpace(out.String()) != `{"targets":[]}` {
		t.Errorf("targets json: %q %v", out.String(), err)
	}
}

func TestWithoutCheckError(t *testing.T) {
	for in, want := range map[string]string{
		"error=true":                                  "error=false",
		"skip=JSONArgsRecommended;error=true":         "skip=JSONArgsRecommended;error=false",
		" error = true ; experimental=all; skip=a,b ": "experimental=all;skip=a,b;error=false",
		"": "error=false",
	} {
		if got := withoutCheckError(in); got != want {
			t.Errorf("withoutCheckError(%q) = %q, want %q", in, got, want)
		}
	}
}

// The check configuration is read the way the frontend reads it: the
// build argument wins over the Dockerfile's directive.
func TestCheckConfig(t *testing.T) {
	dir := t.TempDir()
	kilntest.WriteFile(t, dir+"/Dockerfile", "# check=skip=FromAsCasing;error=true\nFROM scratch\n")
	r := mustPrepare(t, Options{ContextPath: dir})
	if cfg, asErrors, err := r.checkConfig(); err != nil || !asErrors || cfg != "skip=FromAsCasing;error=true" {
		t.Errorf("directive: %q %v %v", cfg, asErrors, err)
	}
	r = mustPrepare(t, Options{ContextPath: dir, BuildArgs: []string{"BUILDKIT_DOCKERFILE_CHECK=error=false"}})
	if _, asErrors, err := r.checkConfig(); err != nil || asErrors {
		t.Errorf("build arg: %v %v", asErrors, err)
	}
	r = mustPrepare(t, Options{ContextPath: dir, BuildArgs: []string{"BUILDKIT_DOCKERFILE_CHECK=error=maybe"}})
	if _, _, err := r.checkConfig(); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("bad build arg: %v", err)
	}
}
