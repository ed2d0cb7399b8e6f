package text

import (
	"bytes"
	"fmt"
	"strings"
	"unicode/utf8"
)

// Text from another peer (a provider's reasons, its class and zone names,
// a job's logs) may hold escape sequences that recolour, move the cursor,
// retitle or clear a terminal, or rewrite what was shown before it. What
// this peer shows a person goes through Line or LogLine first.

// Line is s made safe for a terminal as one line: every control character
// (newline and tab too), DEL, the C1 controls, the bidirectional overrides
// and bytes that are not UTF-8 are written as escapes (\x1b, \n, \u202e),
// so they show rather than act.
func Line(s string) string {
	if lineSafe(s) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n <= 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\t':
			b.WriteString(`\t`)
		case r == '\r':
			b.WriteString(`\r`)
		case unsafeRune(r) && r < 0x100:
			fmt.Fprintf(&b, `\x%02x`, r)
		case unsafeRune(r):
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String()
}

func lineSafe(s string) bool {
	for _, r := range s {
		if r == utf8.RuneError || r == '\n' || r == '\t' || unsafeRune(r) {
			return false
		}
	}
	return true
}

// unsafeRune reports a character that acts on a terminal, or turns the
// order of what follows it, rather than showing: C0 controls, DEL, C1
// controls and the bidirectional embeddings, overrides and isolates.
func unsafeRune(r rune) bool {
	return r < 0x20 || (r >= 0x7f && r < 0xa0) || (r >= 0x202a && r <= 0x202e) || (r >= 0x2066 && r <= 0x2069)
}

// LogLine is one line of a program's output (without its newline) made
// safe for a terminal: escape sequences (colours, cursor moves, titles:
// CSI, OSC and the rest) are removed, a carriage return keeps only what
// follows it (what a terminal would have left on the line: a progress
// bar's last state), tabs stay, and any other control character, DEL, C1
// control, bidirectional override or byte that is not UTF-8 is written as
// an escape, as Line does.
func LogLine(p []byte) []byte {
	p = bytes.TrimRight(p, "\r") // a CRLF line end
	if i := bytes.LastIndexByte(p, '\r'); i >= 0 {
		p = p[i+1:]
	}
	safe := true
	for _, c := range p {
		if c < 0x20 && c != '\t' || c >= 0x7f {
			safe = false
			break
		}
	}
	if safe {
		return p
	}
	out := make([]byte, 0, len(p))
	for i := 0; i < len(p); {
		if p[i] == 0x1b { // ESC: drop the whole sequence
			i += escapeLen(p[i:])
			continue
		}
		r, n := utf8.DecodeRune(p[i:])
		switch {
		case r == utf8.RuneError && n <= 1:
			out = fmt.Appendf(out, `\x%02x`, p[i])
		case r == '\t':
			out = append(out, '\t')
		case r == 0x9b || r == 0x9d: // C1 CSI and OSC: a sequence too
			i += n + sequenceTail(p[i+n:], r == 0x9d)
			continue
		case unsafeRune(r) && r < 0x100:
			out = fmt.Appendf(out, `\x%02x`, r)
		case unsafeRune(r):
			out = fmt.Appendf(out, `\u%04x`, r)
		default:
			out = append(out, p[i:i+n]...)
		}
		i += n
	}
	return out
}

// escapeLen is the length of the escape sequence at the start of p (p[0]
// is ESC): ESC [ ... final, ESC ] ... BEL or ESC \, ESC P/X/^/_ ... ESC \,
// or ESC and one character.
func escapeLen(p []byte) int {
	if len(p) < 2 {
		return len(p)
	}
	switch p[1] {
	case '[':
		return 2 + sequenceTail(p[2:], false)
	case ']', 'P', 'X', '^', '_':
		return 2 + sequenceTail(p[2:], true)
	}
	return 2
}

// sequenceTail is the length of the rest of a control sequence: up to and
// including its final byte (0x40..0x7e) for CSI, or up to its terminator
// (BEL, ESC \ or the C1 ST) for a string (OSC and the like). A sequence
// that does not end on the line takes the rest of it.
func sequenceTail(p []byte, str bool) int {
	for i := 0; i < len(p); i++ {
		c := p[i]
		if !str {
			if c >= 0x40 && c <= 0x7e {
				return i + 1
			}
			if c < 0x20 || c > 0x3f { // not a parameter or intermediate byte: a broken sequence ends here
				return i
			}
			continue
		}
		switch {
		case c == 0x07:
			return i + 1
		case c == 0x1b && i+1 < len(p) && p[i+1] == '\\':
			return i + 2
		case c == 0xc2 && i+1 < len(p) && p[i+1] == 0x9c: // ST, U+009C
			return i + 2
		}
	}
	return len(p)
}
