// Package text shortens and quotes values that came from a user or a peer
// so they can go into an error message or a log line: one problem a line,
// no control characters, nothing longer than a reader can take in.
package text

import (
	"strconv"
	"unicode/utf8"
)

// MaxShown is how many characters of a value Clip and ClipRaw keep.
const MaxShown = 40

// Clip quotes a value for an error message, shortened to MaxShown characters.
func Clip(s string) string { return strconv.Quote(ClipRaw(s)) }

// Printable is s, clipped, or quoted if it has a character that would not
// show in a message of one problem a line.
func Printable(s string) string {
	for _, r := range s {
		if !strconv.IsPrint(r) {
			return Clip(s)
		}
	}
	return ClipRaw(s)
}

// ClipRaw is s cut to MaxShown characters ("..." marks a cut), unquoted.
func ClipRaw(s string) string {
	if utf8.RuneCountInString(s) <= MaxShown {
		return s
	}
	r := []rune(s)
	return string(r[:MaxShown]) + "..."
}

// Cut is s cut to at most n bytes, on a character boundary.
func Cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
