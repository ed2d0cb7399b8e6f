package dht

import (
	"crypto/sha256"
	"fmt"
	"strings"

	"github.com/ipfs/go-cid"
	mh "github.com/multiformats/go-multihash"
)

// vramBuckets are the coarse memory sizes (GB) a provider is indexed under:
// a GPU with v GB is listed under every bucket at or below v, so "any GPU
// with at least 80 GB" is one lookup.
var vramBuckets = []uint32{8, 16, 24, 40, 48, 80, 96, 141, 192}

// Index keys. A provider announces itself (a DHT provider record) under the
// keys of every class it offers; a query looks up the narrowest key it can.
func indexAny() string               { return "any" }
func indexClass(c string) string     { return "class/" + strings.ToUpper(c) }
func indexModel(m string) string     { return "model/" + strings.ToUpper(m) }
func indexVRAM(b uint32) string      { return fmt.Sprintf("vram/%d", b) }
func indexKeyCID(key string) cid.Cid { return cidOf("gpumesh/index/v1/" + key) }

func cidOf(s string) cid.Cid {
	sum := sha256.Sum256([]byte(s))
	h, err := mh.Encode(sum[:], mh.SHA2_256)
	if err != nil {
		panic(err) // a 32-byte SHA-256 always encodes
	}
	return cid.NewCidV1(cid.Raw, h)
}

// IndexKeys lists the index keys of one class offer.
func IndexKeys(g GPUOffer) []string {
	keys := []string{indexAny(), indexClass(g.Class), indexModel(g.Model)}
	for _, b := range vramBuckets {
		if b <= g.VRAMGB {
			keys = append(keys, indexVRAM(b))
		}
	}
	return keys
}

// lookupKey picks the narrowest index key that holds every provider a
// query can match.
func (q Query) lookupKey() string {
	if q.Model != "" {
		if strings.Contains(q.Model, "-") {
			return indexClass(q.Model)
		}
		return indexModel(q.Model)
	}
	key := indexAny()
	for _, b := range vramBuckets {
		if b <= q.MinVRAMGB {
			key = indexVRAM(b)
		}
	}
	return key
}
