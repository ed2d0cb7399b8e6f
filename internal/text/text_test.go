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

func TestSizeAndParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   int64
		want string
	}{{0, "0B"}, {512, "512B"}, {4 << 20, "4MiB"}, {1 << 30, "1GiB"}, {3 << 29, "1.5GiB"}, {20 << 30, "20GiB"}} {
		if got := Size(tc.in); got != tc.want {
			t.Errorf("Size(%d) = %q, want %q", tc.in, got, tc.want)
		}
	}
	for _, tc := range []struct {
		in   string
		want int64
	}{{"4096", 4096}, {"512MiB", 512 << 20}, {"1.5GiB", 3 << 29}, {"20G", 20 << 30}, {"1 tib", 1 << 40}, {"7B", 7}} {
		if got, err := ParseSize(tc.in); err != nil || got != tc.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
	for _, in := range []string{"", "GiB", "-1", "1GB", "1 furlong", "1e3", "99999999PiB"} {
		if got, err := ParseSize(in); err == nil || !strings.Contains(err.Error(), "such as 512MiB") {
			t.Errorf("ParseSize(%q) = %d, %v; want an error that shows the form", in, got, err)
		}
	}
}
