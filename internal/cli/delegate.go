package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"
)

// FullBinary is the name of the kiln binary that has every command. The
// kiln binary a user runs leaves `kiln serve` and `kiln bake` to it:
// their code (the server; buildx's bake parser) costs tens of
// milliseconds of package initialization at every start of a process, and
// `kiln build` should not pay that. It is installed beside kiln.
const FullBinary = "kiln-full"

// Delegate is a command this binary hands, arguments and all, to the full
// kiln binary beside it. The full binary replaces this process (same
// PID, same signals), so to a caller it is as if kiln ran the command.
func Delegate(name, short string) *cobra.Command {
	return &cobra.Command{
		Use:                name,
		Short:              short,
		DisableFlagParsing: true, // --help included: the full binary answers it
		RunE: func(cmd *cobra.Command, args []string) error {
			full, err := fullBinary()
			if err != nil {
				return err
			}
			argv := append([]string{full, name}, args...)
			return syscall.Exec(full, argv, os.Environ())
		},
	}
}

// fullBinary finds kiln-full beside this executable (links resolved).
func fullBinary() (string, error) {
	exe, err := os.Executable()
	if err == nil {
		exe, err = filepath.EvalSymlinks(exe)
	}
	if err != nil {
		return "", fmt.Errorf("find %s: %w", FullBinary, err)
	}
	full := filepath.Join(filepath.Dir(exe), FullBinary)
	if _, err := os.Stat(full); err != nil {
		return "", fmt.Errorf("%s is not installed beside %s: build both with `go build -o DIR/ ./cmd/kiln ./cmd/kiln-full` (make setup does): %w", FullBinary, exe, err)
	}
	return full, nil
}
