// Command kiln-full is kiln with every command: the client commands of
// internal/cli (which never imports server code), `kiln serve` (serve*.go,
// the wiring of internal/server) and `kiln bake` (bake.go; internal/bake
// runs it). The kiln binary users run hands serve and bake to this one,
// installed beside it (cli.Delegate).
package main

import (
	"os"

	"github.com/kiln-dev/kiln/internal/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:], os.Stdout, os.Stderr, newServeCmd(cli.Version), newBakeCmd(), newStoreCmd()))
}
