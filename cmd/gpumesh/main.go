// Command gpumesh runs a peer of the gpumesh GPU compute mesh and talks to it.
package main

import (
	"context"
	"os"

	"github.com/gpumesh/gpumesh/cmd/gpumesh/cli"
)

func main() {
	os.Exit(cli.Run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}
