package text

import (
	"strings"
	"testing"
)

// Hostile text meant for a terminal: every way to act on it shows as
// text, or (in logs) is dropped, and plain text passes as it is.
func TestLineAndLogLineDisarmTerminalEscapes(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"plain", "member 0 could not run: no GPU", "member 0 could not run: no GPU"},
		{"unicode", "zone eu-west/ams1 ✓ é", "zone eu-west/ams1 ✓ é"},
		{"colour", "\x1b[31mred\x1b[0m", `\x1b[31mred\x1b[0m`},
		{"clear screen and title", "\x1b[2J\x1b]0;pwned\x07", `\x1b[2J\x1b]0;pwned\x07`},
		{"a forged second line", "ok\n[gpumesh] job done", `ok\n[gpumesh] job done`},
		{"carriage return rewrites the line", "bad\rgood", `bad\rgood`},
		{"tab, DEL, NUL", "a\tb\x7fc\x00", `a\tb\x7fc\x00`},
		{"C1 CSI", "a\u009b31mb", `a\x9b31mb`},
		{"bidi override", "txt.\u202eexe", `txt.\u202eexe`},
		{"not UTF-8", "a\xffb", `a\xffb`},
	} {
		if got := Line(tc.in); got != tc.want {
			t.Errorf("Line %s: got %q, want %q", tc.name, got, tc.want)
		}
	}
	for _, tc := range []struct{ name, in, want string }{
		{"plain", "epoch 1 loss 0.3", "epoch 1 loss 0.3"},
		{"tabs stay", "a\tb", "a\tb"},
		{"colours go", "\x1b[1;31merror\x1b[0m: x", "error: x"},
		{"cursor moves and clears go", "\x1b[2J\x1b[H\x1b[10A\x1b[Khi", "hi"},
		{"a title goes, BEL or ST ended", "\x1b]0;pwned\x07a\x1b]2;x\x1b\\b", "ab"},
		{"an unended title takes the rest", "a\x1b]0;pwned", "a"},
		{"other escapes go", "\x1bcreset\x1b7x", "resetx"},
		{"C1 CSI goes", "a\u009b2Jb", "ab"},
		{"a progress bar keeps its last state", "10%\r50%\r100%", "100%"},
		{"CRLF", "line\r", "line"},
		{"bell, NUL, backspace show", "a\x07b\x00c\bd", `a\x07b\x00c\x08d`},
		{"bidi override shows", "\u202eabc", `\u202eabc`},
		{"not UTF-8 shows", "a\xffb", `a\xffb`},
		{"a lone ESC at the end", "abc\x1b", "abc"},
	} {
		if got := string(LogLine([]byte(tc.in))); got != tc.want {
			t.Errorf("LogLine %s: got %q, want %q", tc.name, got, tc.want)
		}
	}
}

// Whatever comes in, nothing that acts on a terminal comes out.
func FuzzLogLine(f *testing.F) {
	f.Add([]byte("\x1b[31mx\x1b]0;t\x07\r\u009b\u202e\xff"))
	f.Fuzz(func(t *testing.T, in []byte) {
		out := string(LogLine(in))
		for _, r := range out {
			if r != '\t' && unsafeRune(r) {
				t.Fatalf("LogLine(%q) = %q keeps %U", in, out, r)
			}
		}
		if line := Line(string(in)); strings.ContainsFunc(line, unsafeRune) {
			t.Fatalf("Line(%q) = %q keeps a control", in, line)
		}
	})
}
