package content

import (
	"context"
	"fmt"
	"io"

	"github.com/ipfs/boxo/files"
	unixfile "github.com/ipfs/boxo/ipld/unixfs/file"
	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Share lets every peer of the swarm fetch the blocks of root's DAG from
// this peer (a peer granted nothing, which found us by the root's
// provider record), until Unshare: for content whose CID is what keeps it
// (container image layers a provider cached, node/images). The DAG must
// be whole in the store. Sharing a root twice needs no second Unshare.
func (s *Service) Share(ctx context.Context, root cid.Cid) error {
	g := s.grants
	g.mu.Lock()
	_, had := g.open[root]
	g.mu.Unlock()
	if had {
		return nil
	}
	keys, err := s.blocksOf(ctx, root)
	if err != nil {
		return err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if _, had := g.open[root]; had {
		return nil
	}
	g.open[root] = keys
	for _, k := range keys {
		g.any[k]++
	}
	return nil
}

// Unshare undoes Share: root's blocks go only to peers granted them.
func (s *Service) Unshare(root cid.Cid) {
	g := s.grants
	g.mu.Lock()
	defer g.mu.Unlock()
	keys, ok := g.open[root]
	if !ok {
		return
	}
	delete(g.open, root)
	for _, k := range keys {
		if g.any[k]--; g.any[k] <= 0 {
			delete(g.any, k)
		}
	}
}

// Open reads the file whose DAG is root from the store (Fetch it first):
// its bytes, in order. A root that is a folder is refused.
func (s *Service) Open(ctx context.Context, root cid.Cid) (io.ReadCloser, error) {
	nd, err := s.local.Get(ctx, root)
	if err != nil {
		return nil, fmt.Errorf("content: %s: %w", root, err)
	}
	fn, err := unixfile.NewUnixfsFile(ctx, s.local, nd)
	if err != nil {
		return nil, fmt.Errorf("content: %s: %w", root, err)
	}
	f, ok := fn.(files.File)
	if !ok {
		fn.Close()
		return nil, fmt.Errorf("content: %s is a folder, not a file", root)
	}
	return f, nil
}

// Received is the bytes of blocks this peer has received from p over the
// exchange (its ledger with p, while p is connected or was lately) and
// on bulk streams (FetchFrom).
func (s *Service) Received(p peer.ID) uint64 {
	n := s.bulkReceived(p)
	if s.bs == nil {
		return n
	}
	if r := s.bs.LedgerForPeer(p); r != nil {
		n += r.Recv
	}
	return n
}

// Max is the store's cap in bytes.
func (s *Store) Max() int64 { return s.max }
