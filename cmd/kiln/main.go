// Command kiln is kiln's CLI and server. This binary holds the client
// commands (internal/cli); `kiln serve`, `kiln bake` and `kiln store` run the full kiln
// binary installed beside it (cmd/kiln-full), whose server and bake-file
// code would otherwise slow every start of `kiln build`.
package main

import (
	"os"

	"github.com/kiln-dev/kiln/internal/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:], os.Stdout, os.Stderr,
		cli.Delegate("serve", "Run the kiln server: API, builders and their caches"),
		cli.Delegate("bake", "Build the targets of a bake file (HCL, JSON or Compose) on kiln builders"),
		cli.Delegate("store", "Operate on the control plane's database (move it from SQLite to Postgres)")))
}
