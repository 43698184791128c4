// Command kiln is the kiln server and CLI in one binary. The client
// commands live in internal/cli, which never imports server code; this
// package adds `kiln serve` (serve*.go), the wiring of internal/server.
package main

import (
	"os"

	"github.com/kiln-dev/kiln/internal/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:], os.Stdout, os.Stderr, newServeCmd(cli.Version)))
}
