package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
)

// The Docker CLI plugins kiln installs (links to the kiln binary, which
// tells them apart by the name it was run as):
//   - docker-kiln: `docker kiln build …` is `kiln build …`;
//   - docker-buildx: plain `docker build`, `docker buildx build|bake` and
//     `docker compose build` build on kiln (dockerbuildx.go).
const (
	pluginName = "docker-kiln"
	buildxName = "docker-buildx"
)

// dockerPluginMain handles kiln running as a Docker CLI plugin. Docker first
// asks for metadata (`docker-kiln docker-cli-plugin-metadata`), then runs
// `docker-kiln kiln <args…>`. It reports whether it handled the call, or
// else the arguments for kiln's own command tree.
func dockerPluginMain(args []string, stdout, stderr io.Writer) (rest []string, code int, handled bool) {
	switch filepath.Base(os.Args[0]) {
	case pluginName:
		if len(args) > 0 && args[0] == "docker-cli-plugin-metadata" {
			writePluginMetadata(stdout, Version, "Build on kiln's remote builders (kiln build, kiln projects, …)")
			return nil, 0, true
		}
		if len(args) > 0 && args[0] == "kiln" {
			args = args[1:]
		}
		return args, 0, false
	case buildxName:
		return buildxMain(args, stdout, stderr)
	}
	return args, 0, false
}

func writePluginMetadata(w io.Writer, version, short string) {
	json.NewEncoder(w).Encode(map[string]string{
		"SchemaVersion":    "0.1.0",
		"Vendor":           "kiln",
		"Version":          version,
		"ShortDescription": short,
	})
}

// dockerConfigDir is where the Docker CLI keeps its config and plugins.
func dockerConfigDir() string {
	if d := os.Getenv("DOCKER_CONFIG"); d != "" {
		return d
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".docker")
}

// linksToKiln reports whether path is a symlink to a kiln binary.
func linksToKiln(path string) bool {
	target, err := os.Readlink(path)
	return err == nil && (filepath.Base(target) == "kiln" || filepath.Base(target) == FullBinary)
}

func newConfigureDockerCmd() *cobra.Command {
	var uninstall, force bool
	cmd := &cobra.Command{
		Use:   "configure-docker",
		Short: "Make docker build, docker buildx build/bake and docker compose build run on kiln",
		Long: `Make the Docker CLI of the current user build on kiln: plain 'docker build',
'docker buildx build', 'docker buildx bake' and 'docker compose build' run as
'kiln build' / 'kiln bake' on the project's remote builders, with the same
flags. The project and token come from the usual places (--project is not
needed when kiln.json, KILN_PROJECT_ID or DEPOT_PROJECT_ID names it; the token
from kiln login or KILN_TOKEN). kiln's lines in the build output start with
[kiln] and name the build.

What it changes, in ~/.docker (or $DOCKER_CONFIG):
  cli-plugins/docker-buildx  a link to kiln; a docker-buildx that was there is
                             kept aside and handles the buildx commands kiln
                             does not (ls, du, imagetools, …)
  cli-plugins/docker-kiln    a link to kiln: 'docker kiln build …'
  config.json                "aliases": {"builder": "buildx"}, which Docker
                             CLI 20.10 needs to send 'docker build' to buildx;
                             every other setting stays as it was
  kiln-configure-docker/     what was there before, for --uninstall

--uninstall puts it all back: config.json byte for byte (if you changed it
since, e.g. with docker login, only the alias is taken out), the docker-buildx
that was there, and nothing of kiln's left. A config.json that is not valid
JSON is refused and nothing is changed.`,
		Example: `  kiln configure-docker
  docker build -t app .                    # builds on kiln, loads app into Docker
  docker buildx build --push -t registry.example.com/app:1 .
  docker compose build                     # every service on kiln
  docker kiln builds list                  # kiln's own commands
  kiln configure-docker --uninstall        # back to Docker's own builder`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if uninstall {
				return uninstallDocker(cmd.OutOrStdout(), dockerConfigDir(), force)
			}
			exe, err := os.Executable()
			if err == nil {
				exe, err = filepath.EvalSymlinks(exe)
			}
			if err != nil {
				return err
			}
			return installDocker(cmd.OutOrStdout(), dockerConfigDir(), exe, force)
		},
	}
	cmd.Flags().BoolVar(&uninstall, "uninstall", false, "undo the install: restore config.json and the plugins that were there")
	cmd.Flags().BoolVar(&force, "force", false, "replace or remove a docker-kiln plugin that is not a link to kiln")
	return cmd
}

// installDocker links the plugins to exe, the kiln binary.
func installDocker(out io.Writer, configDir, exe string, force bool) error {
	pluginsDir := filepath.Join(configDir, "cli-plugins")
	kilnLink := filepath.Join(pluginsDir, pluginName)
	// Everything is checked before anything changes.
	if _, err := os.Lstat(kilnLink); err == nil && !linksToKiln(kilnLink) && !force {
		return fmt.Errorf("%s exists and is not kiln's; remove it or use --force", kilnLink)
	}
	configPath := filepath.Join(configDir, "config.json")
	_, keys, _, _, err := readDockerConfig(configPath)
	if err != nil {
		return err
	}
	if _, _, err := builderAlias(configPath, keys); err != nil {
		return err
	}
	st, err := readDockerState(configDir)
	if err != nil {
		return err
	}
	fresh := st == nil
	buildxLink := filepath.Join(pluginsDir, buildxName)
	kept := filepath.Join(stateDir(configDir), origBuildxName)
	if _, err := os.Lstat(kept); fresh && err == nil {
		if _, err := os.Lstat(buildxLink); err == nil && !linksToKiln(buildxLink) {
			return fmt.Errorf("%s holds the docker-buildx an earlier install kept, and %s is another one: move one of them away first", kept, buildxLink)
		}
	}
	if fresh {
		st = &dockerState{}
		for _, d := range []string{configDir, pluginsDir} {
			if _, err := os.Stat(d); errors.Is(err, fs.ErrNotExist) {
				st.Created = append(st.Created, d)
			}
		}
	}
	if err := os.MkdirAll(stateDir(configDir), 0o700); err != nil {
		return err
	}
	if err := os.MkdirAll(pluginsDir, 0o755); err != nil {
		return err
	}
	if fresh {
		if err := setBuilderAlias(configDir, st); err != nil {
			os.Remove(filepath.Join(stateDir(configDir), origConfigName))
			os.Remove(stateDir(configDir)) // only if empty: it may hold a kept buildx
			return err
		}
		if _, err := os.Lstat(kept); err == nil {
			st.PrevBuildx = true // left by an earlier --uninstall; restored by the next
		} else if _, err := os.Lstat(buildxLink); err == nil && !linksToKiln(buildxLink) {
			if err := os.Rename(buildxLink, kept); err != nil {
				return err
			}
			st.PrevBuildx = true
			fmt.Fprintf(out, "kept the docker-buildx that was installed at %s for kiln configure-docker --uninstall\n", buildxLink)
		}
		// The state is on disk before the plugins are: an interrupted
		// install is undone by --uninstall.
		if err := writeDockerState(configDir, st); err != nil {
			return err
		}
		fmt.Fprintf(out, "set \"aliases\": {\"builder\": \"buildx\"} in %s\n", configPath)
	}
	if st.Exe != exe {
		st.Exe = exe
		if err := writeDockerState(configDir, st); err != nil {
			return err
		}
	}
	for _, name := range []string{pluginName, buildxName} {
		link := filepath.Join(pluginsDir, name)
		if err := os.Remove(link); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		if err := os.Symlink(exe, link); err != nil {
			return err
		}
		fmt.Fprintf(out, "installed the Docker CLI plugin %s → %s\n", link, exe)
	}
	fmt.Fprintf(out, "docker build, docker buildx build/bake and docker compose build now run on kiln (undo: kiln configure-docker --uninstall)\n")
	return nil
}

func uninstallDocker(out io.Writer, configDir string, force bool) error {
	st, err := readDockerState(configDir)
	if err != nil {
		return err
	}
	ours := func(link string) bool {
		target, err := os.Readlink(link)
		return err == nil && (linksToKiln(link) || st != nil && target == st.Exe)
	}
	pluginsDir := filepath.Join(configDir, "cli-plugins")
	kilnLink := filepath.Join(pluginsDir, pluginName)
	if _, err := os.Lstat(kilnLink); err == nil {
		if !ours(kilnLink) && !force {
			return fmt.Errorf("%s is not a link to kiln; leaving it (use --force to remove it anyway)", kilnLink)
		}
		if err := os.Remove(kilnLink); err != nil {
			return err
		}
		fmt.Fprintf(out, "removed the Docker CLI plugin %s\n", kilnLink)
	}
	if st == nil {
		fmt.Fprintf(out, "nothing else to do: kiln configure-docker is not installed in %s\n", configDir)
		return nil
	}
	buildxLink := filepath.Join(pluginsDir, buildxName)
	if ours(buildxLink) {
		if err := os.Remove(buildxLink); err != nil {
			return err
		}
		fmt.Fprintf(out, "removed the Docker CLI plugin %s\n", buildxLink)
	}
	keptBuildx := false
	if st.PrevBuildx {
		if _, err := os.Lstat(buildxLink); err == nil {
			// Something installed a docker-buildx since: it stays, and
			// so does the one kiln kept, for the user to choose.
			keptBuildx = true
			fmt.Fprintf(out, "%s was replaced since the install; the one that was there before is left at %s\n", buildxLink, filepath.Join(stateDir(configDir), origBuildxName))
		} else if err := os.Rename(filepath.Join(stateDir(configDir), origBuildxName), buildxLink); err != nil {
			return err
		} else {
			fmt.Fprintf(out, "restored the docker-buildx that was there before at %s\n", buildxLink)
		}
	}
	msg, err := restoreDockerConfig(configDir, st)
	if err != nil {
		return err
	}
	fmt.Fprintln(out, msg)
	if keptBuildx {
		os.Remove(filepath.Join(stateDir(configDir), "state.json"))
		os.Remove(filepath.Join(stateDir(configDir), origConfigName))
		return nil
	}
	if err := os.RemoveAll(stateDir(configDir)); err != nil {
		return err
	}
	// The directories the install made go if nothing else is in them,
	// innermost first.
	for i := len(st.Created) - 1; i >= 0; i-- {
		if entries, err := os.ReadDir(st.Created[i]); err == nil && len(entries) == 0 {
			os.Remove(st.Created[i])
		}
	}
	return nil
}

// buildxDelegate is the buildx kiln stands in for, if there is one: the
// docker-buildx configure-docker kept aside, or a system-wide one the
// user's plugin directory shadows. It runs the commands kiln does not.
func buildxDelegate() string {
	candidates := []string{filepath.Join(stateDir(dockerConfigDir()), origBuildxName)}
	for _, d := range []string{"/usr/local/lib/docker/cli-plugins", "/usr/local/libexec/docker/cli-plugins", "/usr/lib/docker/cli-plugins", "/usr/libexec/docker/cli-plugins"} {
		candidates = append(candidates, filepath.Join(d, buildxName))
	}
	for _, c := range candidates {
		if fi, err := os.Stat(c); err == nil && fi.Mode().IsRegular() && !strings.HasPrefix(filepath.Base(mustEval(c)), "kiln") {
			return c
		}
	}
	return ""
}

func mustEval(p string) string {
	if r, err := filepath.EvalSymlinks(p); err == nil {
		return r
	}
	return p
}
