package jobnet_test

import (
	"bufio"
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
	b, _ = jobnet.AppendPacket(b, pkt[:60])
	r := bufio.NewReaderSize(bytes.NewReader(b), jobnet.MTU+2)
	h, err := jobnet.ReadHello(r)
	if err != nil || h.Job != testJob || h.Attempt != 3 {
		t.Fatalf("hello %+v, %v", h, err)
	}
	pr := jobnet.NewPacketReader(r)
	for _, want := range [][]byte{pkt, pkt[:60]} {
		if got, err := pr.Next(); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("packet of %d bytes, %v; want %d", len(got), err, len(want))
		}
	}
	if _, err := pr.Next(); err != io.EOF {
		t.Fatalf("after the last packet: %v, want EOF", err)
	}
	if _, err := jobnet.AppendPacket(nil, make([]byte, jobnet.MTU+1)); !errors.Is(err, jobnet.ErrBadFrame) {
		t.Errorf("a packet over the MTU framed: %v", err)
	}
	if _, err := jobnet.AppendHello(nil, jobnet.Hello{Job: "nope"}); !errors.Is(err, jobnet.ErrBadFrame) {
		t.Errorf("a hello of no job ID: %v", err)
	}
	for _, bad := range [][]byte{{0xff, 0xff}, {0, 5, 1, 2, 3, 4, 5}, {0, 40, 1}, {0}} {
		pr := jobnet.NewPacketReader(bufio.NewReaderSize(bytes.NewReader(bad), jobnet.MTU+2))
		if _, err := pr.Next(); !errors.Is(err, jobnet.ErrBadFrame) {
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
		pr := jobnet.NewPacketReader(bufio.NewReaderSize(r, jobnet.MTU+2))
		for i := 0; i < 1000; i++ {
			pkt, err := pr.Next()
			if err != nil {
				return
			}
			if len(pkt) < 20 || len(pkt) > jobnet.MTU {
				t.Fatalf("a packet of %d bytes read", len(pkt))
			}
		}
	})
}
