package cli

import (
	"bufio"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/kiln-dev/kiln/internal/client"
)

// kiln as the docker-buildx plugin (kiln configure-docker). The Docker CLI
// runs it for `docker build` (alias or default builder) and `docker buildx
// …` as `docker-buildx buildx <args>`; Compose runs it directly as
// `docker-buildx bake --file - --progress rawjson --metadata-file F
// --allow fs.read=DIR …` with the bake definition (JSON) on stdin.
//
// build and bake become kiln build and kiln bake with buildx's flags
// translated; version answers like buildx (Compose checks it); every other
// buildx command goes to the buildx kiln stands in for (buildxDelegate) or
// fails saying why.

// buildxCompatVersion is the buildx version the shim reports: the flags of
// buildx's build and bake it accepts are buildx's at this version, and
// Compose (v2.40 and v5, read from source) asks for buildx 0.17 or later
// before it uses bake.
const buildxCompatVersion = "v0.30.0"

const buildxUsage = `Usage:  docker buildx COMMAND

kiln's docker-buildx, installed by kiln configure-docker: builds run on kiln.

Commands:
  build    kiln build, with the same flags (docker build too)
  bake     kiln bake, with the same flags (docker compose build too)
  version  the buildx version kiln answers as

Other buildx commands go to the buildx installed before kiln's, if any.
Undo: kiln configure-docker --uninstall
`

// kilnMark starts kiln's own lines in a Docker build's output, so a user
// sees the build ran on kiln.
const kilnMark = "[kiln]"

func buildxMain(args []string, stdout, stderr io.Writer) (rest []string, code int, handled bool) {
	if len(args) > 0 && args[0] == "docker-cli-plugin-metadata" {
		writePluginMetadata(stdout, buildxCompatVersion, "Build on kiln (kiln "+Version+", installed by kiln configure-docker)")
		return nil, 0, true
	}
	orig := args
	if len(args) > 0 && args[0] == "buildx" { // run by the Docker CLI
		args = args[1:]
	}
	args = dropBuildxGlobals(args)
	if len(args) == 0 {
		fmt.Fprint(stderr, buildxUsage)
		return nil, 1, true
	}
	switch args[0] {
	case "--help", "-h", "help":
		fmt.Fprint(stdout, buildxUsage)
		return nil, 0, true
	case "build", "b":
		a := translateBuildArgs(args[1:])
		if err := checkBuildProject(a); err != nil {
			fmt.Fprintf(stderr, "kiln: docker build runs on kiln (kiln configure-docker) and %v\n(to build with Docker's own builder again: kiln configure-docker --uninstall)\n", err)
			return nil, 1, true
		}
		if progressOf(a) != "quiet" {
			fmt.Fprintf(stderr, "%s docker build runs on kiln: kiln build %s\n", kilnMark, shownArgs(a))
		}
		return append([]string{"build"}, a...), 0, false
	case "bake", "f":
		return nil, runBakeForDocker(args[1:], stdout, stderr), true
	case "version":
		fmt.Fprintf(stdout, "github.com/docker/buildx %s kiln-%s\n", buildxCompatVersion, Version)
		return nil, 0, true
	}
	if d := buildxDelegate(); d != "" {
		err := syscall.Exec(d, append([]string{d}, orig...), os.Environ())
		fmt.Fprintf(stderr, "kiln: run %s: %v\n", d, err)
		return nil, 1, true
	}
	fmt.Fprintf(stderr, "kiln: docker buildx %s: kiln's docker-buildx (kiln configure-docker) runs build, bake and version on kiln, and there is no other buildx installed to hand %q to; undo with kiln configure-docker --uninstall\n", args[0], args[0])
	return nil, 1, true
}

// dropBuildxGlobals removes buildx's own flags before the command: the
// builder instance (kiln picks the project's builders) and debug.
func dropBuildxGlobals(args []string) []string {
	for len(args) > 0 {
		switch a := args[0]; {
		case a == "--builder" && len(args) > 1:
			args = args[2:]
		case strings.HasPrefix(a, "--builder="), a == "-D", a == "--debug":
			args = args[1:]
		default:
			return args
		}
	}
	return args
}

// buildxOnly are buildx build/bake flags with no meaning on kiln, dropped:
// the builder instance, local entitlement checks (kiln's builders decide
// what is allowed), the legacy builder's container flags, and --pull (a
// kiln builder resolves base images from their registries each build).
var buildxOnly = map[string]bool{"--builder": true, "--allow": true}
var buildxOnlyBool = map[string]bool{"--rm": true, "--force-rm": true, "--pull": true, "-D": true, "--debug": true}

// translateBuildArgs turns `docker buildx build` arguments into `kiln
// build` ones. Like `docker build` with Docker's own builder, a build that
// names no output loads its image into the Docker engine (--load).
func translateBuildArgs(args []string) []string {
	out := make([]string, 0, len(args)+1)
	hasOutput := false
	for i := 0; i < len(args); i++ {
		a := args[i]
		name, _, _ := strings.Cut(a, "=")
		if n := buildxOnlyAt(args, i); n > 0 {
			i += n - 1
			continue
		}
		switch {
		case a == "--":
			out = append(out, args[i:]...)
			i = len(args)
			continue
		case a == "-q" || a == "--quiet":
			out = append(out, "--progress=quiet")
			continue
		}
		switch {
		case name == "-o", name == "--output", name == "--push", name == "--load", name == "--call", name == "--check",
			strings.HasPrefix(a, "-o") && len(a) > 2 && !strings.HasPrefix(a, "--"):
			hasOutput = true
		}
		out = append(out, a)
	}
	if !hasOutput {
		out = append([]string{"--load"}, out...)
	}
	return out
}

// buildxOnlyAt is how many arguments from args[i] on are a buildx-only
// flag kiln drops: 2 for one with its value in the next argument, 1, or 0
// when args[i] is not one.
func buildxOnlyAt(args []string, i int) int {
	name, _, hasValue := strings.Cut(args[i], "=")
	switch {
	case buildxOnly[name] && !hasValue:
		return 2
	case buildxOnly[name], buildxOnlyBool[name]:
		return 1
	}
	return 0
}

// progressOf is the last --progress value in args ("" if none).
func progressOf(args []string) string {
	p := ""
	for i, a := range args {
		if v, ok := strings.CutPrefix(a, "--progress="); ok {
			p = v
		} else if a == "--progress" && i+1 < len(args) {
			p = args[i+1]
		}
	}
	return p
}

// translateBakeArgs turns `docker buildx bake` arguments (Compose's
// included) into `kiln bake` ones.
func translateBakeArgs(args []string) []string {
	out := make([]string, 0, len(args))
	for i := 0; i < len(args); i++ {
		a := args[i]
		name, value, hasValue := strings.Cut(a, "=")
		if a == "--" {
			return append(out, args[i:]...)
		}
		if n := buildxOnlyAt(args, i); n > 0 {
			i += n - 1
			continue
		}
		switch {
		case name == "--sbom":
			if !hasValue && i+1 < len(args) {
				i++
				value = args[i]
			}
			switch value {
			case "true", "":
				out = append(out, "--set=*.attest=type=sbom")
			case "false":
				out = append(out, "--set=*.attest=type=sbom,disabled=true")
			default:
				out = append(out, "--set=*.attest=type=sbom,"+value)
			}
			continue
		}
		out = append(out, a)
	}
	return out
}

// runBakeForDocker runs kiln bake (the full binary) for docker buildx bake
// and docker compose build, and returns its exit code.
//
// With --progress rawjson (Compose) stderr is a stream of BuildKit solve
// statuses, and Compose shows other lines only if the bake fails. So
// kiln's own lines (the build id, each target's outcome) become vertices
// named "[kiln] …" in that stream, and Compose's progress shows them.
func runBakeForDocker(args []string, stdout, stderr io.Writer) int {
	full, err := fullBinary()
	if err != nil {
		fmt.Fprintf(stderr, "kiln: %v\n", err)
		return 1
	}
	a := translateBakeArgs(args)
	cmd := exec.Command(full, append([]string{"bake"}, a...)...)
	cmd.Stdin, cmd.Stdout = os.Stdin, stdout
	rawjson := progressOf(a) == "rawjson"
	if !rawjson {
		if progressOf(a) != "quiet" {
			fmt.Fprintf(stderr, "%s docker buildx bake runs on kiln: kiln bake %s\n", kilnMark, shownArgs(a))
		}
		cmd.Stderr = stderr
		return exitCode(cmd.Run(), stderr)
	}
	pipe, err := cmd.StderrPipe()
	if err != nil {
		fmt.Fprintf(stderr, "kiln: %v\n", err)
		return 1
	}
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(stderr, "kiln: %v\n", err)
		return 1
	}
	markRawJSON(pipe, stderr, "docker buildx bake runs on kiln")
	return exitCode(cmd.Wait(), stderr)
}

// markRawJSON copies a rawjson progress stream, turning every line that is
// not a JSON object into a finished "[kiln] …" vertex. It also keeps the
// line itself after the vertex: Compose prints those when bake fails.
func markRawJSON(r io.Reader, w io.Writer, first string) {
	enc := json.NewEncoder(w)
	vertex := func(line string) {
		now := time.Now().UTC()
		type vertex struct {
			Digest    string     `json:"digest"`
			Name      string     `json:"name"`
			Started   *time.Time `json:"started"`
			Completed *time.Time `json:"completed"`
		}
		name := kilnMark + " " + line
		enc.Encode(map[string][]vertex{"vertexes": {{Digest: fmt.Sprintf("sha256:%x", sha256.Sum256([]byte(name+now.String()))), Name: name, Started: &now, Completed: &now}}})
	}
	vertex(first)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 16<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "{") && json.Valid([]byte(line)) {
			fmt.Fprintln(w, line)
			continue
		}
		if strings.TrimSpace(line) == "" {
			continue
		}
		vertex(strings.TrimPrefix(line, "kiln: "))
		fmt.Fprintln(w, line)
	}
	if err := sc.Err(); err != nil {
		// A line over the buffer: pass the rest through unmarked rather
		// than leave the child blocked on a full pipe.
		vertex("progress stream: " + err.Error())
		_, _ = io.Copy(w, r)
	}
}

// shownArgs is args as kiln prints them on the "runs on kiln" line:
// build argument values (--build-arg K=V, bake's --set *.args.K=V) are
// replaced by "…", as they may be tokens that have no place in CI logs.
func shownArgs(args []string) string {
	out := make([]string, len(args))
	hide := func(kv string) string {
		if k, _, ok := strings.Cut(kv, "="); ok {
			return k + "=…"
		}
		return kv
	}
	valueFlag := ""
	for i, a := range args {
		switch {
		case valueFlag == "--build-arg":
			a = hide(a)
		case valueFlag == "--set" && strings.Contains(a, ".args."):
			a = hide(a)
		case strings.HasPrefix(a, "--build-arg="):
			a = "--build-arg=" + hide(strings.TrimPrefix(a, "--build-arg="))
		case strings.HasPrefix(a, "--set=") && strings.Contains(a, ".args."):
			a = "--set=" + hide(strings.TrimPrefix(a, "--set="))
		}
		valueFlag = ""
		if a == "--build-arg" || a == "--set" {
			valueFlag = a
		}
		out[i] = a
	}
	return strings.Join(out, " ")
}

func exitCode(err error, stderr io.Writer) int {
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.ExitCode()
	default:
		fmt.Fprintf(stderr, "kiln: %v\n", err)
		return 1
	}
}

// checkBuildProject says, before anything else runs, when a docker build
// has no kiln project: outside a project a user must learn that docker
// build now goes to kiln, and how to undo that.
func checkBuildProject(args []string) error {
	cmd := newBuildCmd(&globals{})
	if err := cmd.ParseFlags(args); err != nil {
		return nil // kiln build reports it
	}
	project, _ := cmd.Flags().GetString("project")
	rest := cmd.Flags().Args()
	if len(rest) != 1 {
		return nil
	}
	if _, err := client.FindProject(project, projectDirOf(rest[0])); err != nil {
		return fmt.Errorf("needs a kiln project: %w", err)
	}
	return nil
}
