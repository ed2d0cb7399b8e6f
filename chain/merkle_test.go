package chain_test

import (
	"fmt"
	"testing"

	"github.com/gpumesh/gpumesh/chain"
)

func leaves(n int) []chain.Hash {
	out := make([]chain.Hash, n)
	for i := range out {
		out[i] = chain.LeafHash([]byte(fmt.Sprintf("receipt %d", i)))
	}
	return out
}

func TestEveryLeafsPathLeadsToTheRoot(t *testing.T) {
	for _, n := range []int{1, 2, 3, 4, 5, 7, 8, 9, 31, 100, 1025} {
		ls := leaves(n)
		tree, err := chain.NewTree(ls)
		if err != nil {
			t.Fatal(err)
		}
		for i, l := range ls {
			if got := chain.RootOf(l, tree.Path(i)); got != tree.Root() {
				t.Fatalf("n=%d leaf %d: path leads to %s, root %s", n, i, got, tree.Root())
			}
		}
		// A wrong leaf, or a flipped step, leads elsewhere.
		if n > 1 {
			p := tree.Path(n - 1)
			if chain.RootOf(ls[0], p) == tree.Root() {
				t.Fatalf("n=%d: leaf 0 proves with leaf %d's path", n, n-1)
			}
			p[0].Right = !p[0].Right
			if chain.RootOf(ls[n-1], p) == tree.Root() {
				t.Fatalf("n=%d: a flipped step still proves", n)
			}
		}
	}
}

func TestRootsDependOnEveryLeafAndTheirOrder(t *testing.T) {
	ls := leaves(5)
	a, _ := chain.NewTree(ls)
	swapped := append([]chain.Hash(nil), ls...)
	swapped[1], swapped[2] = swapped[2], swapped[1]
	b, _ := chain.NewTree(swapped)
	// The odd leaf is carried up, not doubled: five leaves and six (the
	// last repeated) have different roots.
	c, _ := chain.NewTree(append(append([]chain.Hash(nil), ls...), ls[4]))
	if a.Root() == b.Root() || a.Root() == c.Root() {
		t.Fatal("roots collide")
	}
	// A leaf's hash never equals an inner node's of the same bytes.
	one, _ := chain.NewTree(ls[:1])
	if one.Root() != ls[0] {
		t.Fatal("a single leaf is its own root")
	}
	if _, err := chain.NewTree(nil); err == nil {
		t.Fatal("an empty tree was built")
	}
}

// BenchmarkBatching is hashing and batching: leaves of 1 KiB receipts and
// the tree of a 5,000-receipt batch (target: 100,000 receipts/s on 2 cores).
func BenchmarkBatching(b *testing.B) {
	data := make([][]byte, 5000)
	for i := range data {
		data[i] = make([]byte, 1024)
		copy(data[i], fmt.Sprintf("receipt %d", i))
	}
	b.ResetTimer()
	for range b.N {
		ls := make([]chain.Hash, len(data))
		for i, d := range data {
			ls[i] = chain.LeafHash(d)
		}
		t, err := chain.NewTree(ls)
		if err != nil {
			b.Fatal(err)
		}
		for i := range ls {
			_ = t.Path(i)
		}
	}
	b.ReportMetric(float64(b.N*len(data))/b.Elapsed().Seconds(), "receipts/s")
}
