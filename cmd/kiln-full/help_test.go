package main

import (
	"regexp"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/kiln-dev/kiln/internal/cli"
)

// pflag takes a `quoted` word in a flag's usage as its value name, so
// "or `kiln login`" printed as "--token kiln login". A value name in
// backquotes must be one placeholder word (NAME, DIR).
func TestHelpHasNoStrayValueNames(t *testing.T) {
	placeholder := regexp.MustCompile(`^[A-Z][A-Z0-9_-]*$`)
	root := cli.NewRoot(newServeCmd("test"), newBakeCmd(), newStoreCmd())
	var walk func(*cobra.Command)
	n := 0
	walk = func(cmd *cobra.Command) {
		check := func(f *pflag.Flag) {
			n++
			name, _ := pflag.UnquoteUsage(f)
			if name != "" && !placeholder.MatchString(name) && name != typeName(f) {
				t.Errorf("%s --%s: help shows the value name %q (backquotes in its usage text: %q)", cmd.CommandPath(), f.Name, name, f.Usage)
			}
		}
		cmd.LocalFlags().VisitAll(check)
		cmd.InheritedFlags().VisitAll(check)
		for _, c := range cmd.Commands() {
			walk(c)
		}
	}
	walk(root)
	if n < 50 {
		t.Fatalf("walked only %d flags: the command tree is not the whole CLI", n)
	}
}

// typeName is the value name pflag derives from a flag's type when its
// usage names none ("string", "strings", "int", "duration").
func typeName(f *pflag.Flag) string {
	g := *f
	g.Usage = ""
	name, _ := pflag.UnquoteUsage(&g)
	return name
}
