// Package golden runs golden scripts, the tests of the pure state machines
// (negotiation, run attempts): each file holds commands, a line "----",
// then the transcript the machine must print. Run the tests with -rewrite
// to write the transcripts anew, then read the diff.
package golden

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Separator ends a script's commands; the transcript follows it.
const Separator = "\n----\n"

// Run runs every script that glob names as a subtest (named after its
// file): run gets the commands and returns the transcript, which must
// match the file's, or with rewrite replaces it.
func Run(t *testing.T, glob string, rewrite bool, run func(t *testing.T, script string) string) {
	t.Helper()
	files, err := filepath.Glob(glob)
	if err != nil || len(files) == 0 {
		t.Fatalf("no scripts match %s: %v", glob, err)
	}
	for _, file := range files {
		t.Run(strings.TrimSuffix(filepath.Base(file), ".txt"), func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			script, want, ok := strings.Cut(string(data), Separator)
			if !ok {
				t.Fatalf("%s: no %q line before the transcript", file, strings.TrimSpace(Separator))
			}
			got := run(t, script)
			if rewrite {
				if err := os.WriteFile(file, []byte(script+Separator+got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			if got != want {
				t.Errorf("%s: transcript:\n%s\nwant:\n%s", file, got, want)
			}
		})
	}
}
