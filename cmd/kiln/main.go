// Command kiln is the kiln server and CLI in one binary.
package main

import (
	"os"

	"github.com/kiln-dev/kiln/internal/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:], os.Stdout, os.Stderr))
}
