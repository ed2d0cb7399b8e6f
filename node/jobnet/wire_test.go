package jobnet_test

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/gpumesh/gpumesh/node/jobnet"
)

func TestFramesRoundTripAndBoundsHold(t *testing.T) {
	b, err := jobnet.AppendHello(nil, jobnet.Hello{Job: testJob, Attempt: 3})
	if err != nil {
		t.Fatal(err)
	}
	pkt := make([]byte, 100)
	pkt[0] = 0x45
	b, err = jobnet.AppendPacket(b, pkt)
	if err != nil {
		t.Fatal(err)
	}
	r := bytes.NewReader(b)
	h, err := jobnet.ReadHello(r)
	if err != nil || h.Job != testJob || h.Attempt != 3 {
		t.Fatalf("hello %+v, %v", h, err)
	}
	buf := make([]byte, jobnet.MTU)
	got, err := jobnet.ReadPacket(r, buf)
	if err != nil || !bytes.Equal(got, pkt) {
		t.Fatalf("packet %d bytes, %v", len(got), err)
	}
	if _, err := jobnet.ReadPacket(r, buf); err != io.EOF {
		t.Fatalf("after the last packet: %v, want EOF", err)
	}
	if _, err := jobnet.AppendPacket(nil, make([]byte, jobnet.MTU+1)); !errors.Is(err, jobnet.ErrBadFrame) {
		t.Errorf("a packet over the MTU framed: %v", err)
	}
	if _, err := jobnet.AppendHello(nil, jobnet.Hello{Job: "nope"}); !errors.Is(err, jobnet.ErrBadFrame) {
		t.Errorf("a hello of no job ID: %v", err)
	}
	for _, bad := range [][]byte{{0xff, 0xff}, {0, 5, 1, 2, 3, 4, 5}, {0, 40, 1}} {
		if _, err := jobnet.ReadPacket(bytes.NewReader(bad), buf); !errors.Is(err, jobnet.ErrBadFrame) {
			t.Errorf("%x read as a packet: %v", bad, err)
		}
	}
}

func FuzzReadFrames(f *testing.F) {
	b, _ := jobnet.AppendHello(nil, jobnet.Hello{Job: testJob, Attempt: 1})
	p := make([]byte, 40)
	p[0] = 0x45
	b, _ = jobnet.AppendPacket(b, p)
	f.Add(b)
	f.Add([]byte{})
	f.Add(bytes.Repeat([]byte{0xff}, 40))
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bytes.NewReader(b)
		if _, err := jobnet.ReadHello(r); err != nil {
			return
		}
		buf := make([]byte, jobnet.MTU)
		for i := 0; i < 1000; i++ {
			pkt, err := jobnet.ReadPacket(r, buf)
			if err != nil {
				return
			}
			if len(pkt) < 20 || len(pkt) > jobnet.MTU {
				t.Fatalf("a packet of %d bytes read", len(pkt))
			}
		}
	})
}
