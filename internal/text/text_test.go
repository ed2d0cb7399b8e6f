package text

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestClipAndCut(t *testing.T) {
	long := strings.Repeat("é", 50)
	for _, tc := range []struct{ name, got, want string }{
		{"short stays", ClipRaw("abc"), "abc"},
		{"long is cut to MaxShown characters", ClipRaw(long), strings.Repeat("é", MaxShown) + "..."},
		{"clip quotes", Clip("a\"b"), `"a\"b"`},
		{"printable keeps plain text", Printable("env.HOME"), "env.HOME"},
		{"printable quotes control characters", Printable("a\x1b[31m"), `"a\x1b[31m"`},
		{"cut keeps short", Cut("abc", 5), "abc"},
		{"cut on a character boundary", Cut("aé", 2), "a"},
	} {
		if tc.got != tc.want {
			t.Errorf("%s: got %q, want %q", tc.name, tc.got, tc.want)
		}
	}
	if s := Cut(long, 33); len(s) > 33 || !utf8.ValidString(s) {
		t.Errorf("Cut(long, 33) = %q: %d bytes, valid %v", s, len(s), utf8.ValidString(s))
	}
}
