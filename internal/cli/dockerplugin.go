package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
)

// pluginName is the Docker CLI plugin kiln installs: `docker kiln build …`.
const pluginName = "docker-kiln"

// dockerPluginMain handles kiln running as a Docker CLI plugin. Docker first
// asks for metadata (`docker-kiln docker-cli-plugin-metadata`), then runs
// `docker-kiln kiln <args…>`. It reports whether it handled the call.
func dockerPluginMain(args []string, stdout io.Writer) (rest []string, handled bool) {
	if filepath.Base(os.Args[0]) != pluginName {
		return args, false
	}
	if len(args) > 0 && args[0] == "docker-cli-plugin-metadata" {
		json.NewEncoder(stdout).Encode(map[string]string{
			"SchemaVersion":    "0.1.0",
			"Vendor":           "kiln",
			"Version":          Version,
			"ShortDescription": "Build on kiln's remote builders (kiln build, kiln projects, …)",
		})
		return nil, true
	}
	if len(args) > 0 && args[0] == "kiln" {
		args = args[1:]
	}
	return args, false
}

// dockerConfigDir is where the Docker CLI keeps its config and plugins.
func dockerConfigDir() string {
	if d := os.Getenv("DOCKER_CONFIG"); d != "" {
		return d
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".docker")
}

func newConfigureDockerCmd() *cobra.Command {
	var uninstall, force bool
	cmd := &cobra.Command{
		Use:   "configure-docker",
		Short: "Install kiln as a Docker CLI plugin so `docker kiln build` works",
		Long: `Install kiln as a Docker CLI plugin (a link at ~/.docker/cli-plugins/docker-kiln,
or under $DOCKER_CONFIG) so 'docker kiln build …' runs 'kiln build …' with the same
flags. --uninstall removes the link again. kiln does not replace 'docker build'
or buildx: nothing else in your Docker setup changes.`,
		Example: `  kiln configure-docker
  docker kiln build -o type=oci,dest=out.tar .
  kiln configure-docker --uninstall`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			dir := filepath.Join(dockerConfigDir(), "cli-plugins")
			link := filepath.Join(dir, pluginName)
			exe, err := os.Executable()
			if err != nil {
				return err
			}
			if exe, err = filepath.EvalSymlinks(exe); err != nil {
				return err
			}
			current, readErr := os.Readlink(link)
			_, statErr := os.Lstat(link)
			exists := statErr == nil
			ours := readErr == nil && filepath.Base(current) == "kiln"
			if uninstall {
				if !exists {
					fmt.Fprintf(cmd.OutOrStdout(), "nothing to do: %s is not installed\n", link)
					return nil
				}
				if !ours && !force {
					return fmt.Errorf("%s is not a link to kiln; leaving it (use --force to remove it anyway)", link)
				}
				if err := os.Remove(link); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "removed the Docker CLI plugin %s\n", link)
				return nil
			}
			if exists && !ours && !force {
				return fmt.Errorf("%s exists and is not kiln's; remove it or use --force", link)
			}
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
			if exists {
				if err := os.Remove(link); err != nil && !errors.Is(err, os.ErrNotExist) {
					return err
				}
			}
			if err := os.Symlink(exe, link); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "installed the Docker CLI plugin %s → %s\ntry: docker kiln build --help\n", link, exe)
			return nil
		},
	}
	cmd.Flags().BoolVar(&uninstall, "uninstall", false, "remove the plugin")
	cmd.Flags().BoolVar(&force, "force", false, "replace or remove a docker-kiln plugin that is not a link to kiln")
	return cmd
}
