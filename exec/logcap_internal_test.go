package exec

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func TestALogCapPassesOutputUpToItsCapThenSaysSoAndRefuses(t *testing.T) {
	var out, errs bytes.Buffer
	lc := newLogCap(10, &out, &errs)
	stdout, stderr := lc.writers()
	if n, err := stdout.Write([]byte("123456")); n != 6 || err != nil {
		t.Fatalf("first write: %d, %v", n, err)
	}
	if n, err := stderr.Write([]byte("abcdef")); n != 4 || !errors.Is(err, errLogCap) {
		t.Fatalf("write over the cap: %d, %v; want 4 and errLogCap", n, err)
	}
	if n, err := stdout.Write([]byte("x")); n != 0 || !errors.Is(err, errLogCap) {
		t.Fatalf("write after the cap: %d, %v; want 0 and errLogCap", n, err)
	}
	if out.String() != "123456" {
		t.Errorf("stdout %q, want 123456", out.String())
	}
	if !strings.HasPrefix(errs.String(), "abcd\n") || !strings.Contains(errs.String(), "output cut at 10B") || strings.Count(errs.String(), "cut") != 1 {
		t.Errorf("stderr %q, want abcd and one note that the output was cut", errs.String())
	}
	lc.note("gpumesh: a note\n")
	if !strings.HasSuffix(errs.String(), "gpumesh: a note\n") {
		t.Errorf("a note past the cap is lost: %q", errs.String())
	}
}
