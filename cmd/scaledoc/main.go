// Command scaledoc writes docs/scale.md's figures (the table between its
// marker lines, and docs/scale.svg) from the scale benchmark's JSON lines
// (docs/scale.jsonl). The benchmark does this itself after each run; run
// it after editing the lines by hand: `make scale-docs`.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/gpumesh/gpumesh/internal/scaledoc"
)

func main() {
	jsonl := flag.String("jsonl", "docs/scale.jsonl", "the scale benchmark's JSON lines")
	md := flag.String("md", "docs/scale.md", "the Markdown file whose figures to rewrite (the plot goes beside it)")
	flag.Parse()
	if err := scaledoc.Update(*jsonl, *md); err != nil {
		fmt.Fprintln(os.Stderr, "scaledoc:", err)
		os.Exit(1)
	}
}
