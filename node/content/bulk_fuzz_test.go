package content

import (
	"bufio"
	"bytes"
	"testing"

	"github.com/ipfs/go-cid"
	mh "github.com/multiformats/go-multihash"
)

func FuzzReadWants(f *testing.F) {
	h, _ := mh.Sum([]byte("x"), mh.SHA2_256, -1)
	c := cid.NewCidV1(cid.Raw, h)
	f.Add(appendWants(nil, []cid.Cid{c, c}))
	f.Add([]byte{0})
	f.Add([]byte{200, 1})
	f.Fuzz(func(t *testing.T, in []byte) {
		cs, err := readWants(bufio.NewReader(bytes.NewReader(in)))
		if err != nil {
			return
		}
		if len(cs) == 0 || len(cs) > bulkBatch {
			t.Fatalf("%d CIDs decoded, want 1 to %d", len(cs), bulkBatch)
		}
		// What decodes encodes back to a prefix of the input.
		if out := appendWants(nil, cs); !bytes.HasPrefix(in, out) {
			t.Fatalf("re-encoded %x, not a prefix of %x", out, in)
		}
	})
}

func FuzzReadBlock(f *testing.F) {
	f.Add([]byte{0})
	f.Add([]byte{1, 3, 'a', 'b', 'c'})
	f.Add([]byte{1, 0x81, 0x80, 0x80, 0x01})
	f.Add([]byte{2})
	f.Fuzz(func(t *testing.T, in []byte) {
		data, ok, err := readBlock(bufio.NewReader(bytes.NewReader(in)), nil)
		if err != nil {
			return
		}
		if !ok && data != nil {
			t.Fatal("none with bytes")
		}
		if len(data) > MaxBlock || len(data) > len(in) {
			t.Fatalf("%d bytes decoded from %d", len(data), len(in))
		}
	})
}
