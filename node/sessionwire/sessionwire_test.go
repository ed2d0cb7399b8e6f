package sessionwire_test

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/gpumesh/gpumesh/node/sessionwire"
)

func TestExecFramesRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	fw := sessionwire.NewWriter(&buf)
	big := bytes.Repeat([]byte("x"), sessionwire.MaxData+10)
	if _, err := (sessionwire.DataWriter{FW: fw, Type: sessionwire.Stdout}).Write(big); err != nil {
		t.Fatal(err)
	}
	for _, f := range []sessionwire.Frame{sessionwire.ResizeFrame(40, 120), {Type: sessionwire.StdinEOF}, sessionwire.ExitFrame(-3)} {
		if err := fw.Write(f); err != nil {
			t.Fatal(err)
		}
	}
	r := bufio.NewReader(&buf)
	var out []byte
	for range 2 {
		f, err := sessionwire.Read(r)
		if err != nil || f.Type != sessionwire.Stdout {
			t.Fatalf("got %v, %v; want stdout", f.Type, err)
		}
		out = append(out, f.Data...)
	}
	if !bytes.Equal(out, big) {
		t.Errorf("stdout of %d bytes came back as %d", len(big), len(out))
	}
	f, _ := sessionwire.Read(r)
	if rows, cols := f.Size(); f.Type != sessionwire.Resize || rows != 40 || cols != 120 {
		t.Errorf("resize came back as %v %dx%d", f.Type, cols, rows)
	}
	if f, _ = sessionwire.Read(r); f.Type != sessionwire.StdinEOF {
		t.Errorf("got %v, want stdin EOF", f.Type)
	}
	if f, _ = sessionwire.Read(r); f.Type != sessionwire.Exit || f.Code() != -3 {
		t.Errorf("got %v code %d, want exit -3", f.Type, f.Code())
	}
	if _, err := sessionwire.Read(r); err != io.EOF {
		t.Errorf("after the last frame: %v, want EOF", err)
	}
}

func TestBadFramesAreRefusedWithWhy(t *testing.T) {
	for name, raw := range map[string][]byte{
		"unknown type":      {99, 1, 'x'},
		"stdin too long":    append([]byte{1, 0x81, 0x80, 0x02}, make([]byte, 8)...),
		"empty stdout":      {16, 0},
		"resize of 3 bytes": {3, 3, 0, 1, 0},
		"resize to zero":    {3, 4, 0, 0, 0, 80},
		"cut short":         {16, 5, 'a'},
	} {
		_, err := sessionwire.Read(bufio.NewReader(bytes.NewReader(raw)))
		if err == nil || (name != "cut short" && !errors.Is(err, sessionwire.ErrBadFrame)) {
			t.Errorf("%s: %v, want a bad frame", name, err)
		}
	}
	for name, o := range map[string]sessionwire.Open{
		"no command":       {Kind: sessionwire.KindExec, Job: "j"},
		"port 0":           {Kind: sessionwire.KindForward, Job: "j"},
		"size without tty": {Kind: sessionwire.KindExec, Job: "j", Command: []string{"sh"}, Rows: 3, Cols: 4},
		"unknown kind":     {Kind: "shell", Job: "j"},
		"rank too big":     {Kind: sessionwire.KindForward, Job: "j", Port: 80, Rank: sessionwire.MaxRank},
	} {
		var buf bytes.Buffer
		if err := sessionwire.WriteOpen(&buf, o); err != nil {
			t.Fatal(err)
		}
		if _, err := sessionwire.ReadOpen(bufio.NewReader(&buf)); !errors.Is(err, sessionwire.ErrBadFrame) {
			t.Errorf("%s: %v, want a bad frame", name, err)
		}
	}
	var buf bytes.Buffer
	_ = sessionwire.WriteReply(&buf, sessionwire.Reply{Error: strings.Repeat("e", 5000)})
	if rep, err := sessionwire.ReadReply(bufio.NewReader(&buf)); err != nil || len(rep.Error) > sessionwire.MaxText {
		t.Errorf("a long reason: %d bytes, %v; want it cut to %d", len(rep.Error), err, sessionwire.MaxText)
	}
}

// FuzzRead: any bytes a stranger sends give frames within their bounds or
// an error, never a panic or a frame out of bounds.
func FuzzRead(f *testing.F) {
	f.Add([]byte{1, 3, 'a', 'b', 'c', 2, 0, 3, 4, 0, 24, 0, 80})
	f.Add([]byte{18, 4, 0, 0, 0, 1})
	f.Add([]byte{19, 2, 'n', 'o'})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bufio.NewReader(bytes.NewReader(data))
		for range 64 {
			fr, err := sessionwire.Read(r)
			if err != nil {
				return
			}
			if len(fr.Data) > sessionwire.MaxData {
				t.Fatalf("frame of %d bytes", len(fr.Data))
			}
			if fr.Type == sessionwire.Resize {
				if rows, cols := fr.Size(); rows < 1 || cols < 1 || rows > sessionwire.MaxWinSide || cols > sessionwire.MaxWinSide {
					t.Fatalf("terminal %dx%d", cols, rows)
				}
			}
		}
	})
}

// FuzzReadOpen: an Open that reads is one that checks.
func FuzzReadOpen(f *testing.F) {
	for _, o := range []sessionwire.Open{
		{Kind: sessionwire.KindExec, Job: "j", Command: []string{"sh"}, TTY: true, Rows: 24, Cols: 80},
		{Kind: sessionwire.KindForward, Job: "j", Port: 8000, Rank: 1},
	} {
		var buf bytes.Buffer
		_ = sessionwire.WriteOpen(&buf, o)
		f.Add(buf.Bytes())
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		o, err := sessionwire.ReadOpen(bufio.NewReader(bytes.NewReader(data)))
		if err != nil {
			return
		}
		if o.Check() != nil || len(o.Command) > sessionwire.MaxArgs {
			t.Fatalf("an open that does not check came through: %+v", o)
		}
	})
}
