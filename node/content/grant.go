package content

import (
	"context"
	"fmt"
	"sync"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"
)

// grants is who may fetch what from this peer: the exchange serves a
// block only to a peer granted a root whose DAG holds it (its filter,
// allowed). A grant lasts until revoked; a root granted twice to a peer
// (two jobs with the same input) needs two revokes.
type grants struct {
	mu    sync.Mutex
	roots map[cid.Cid]*grant         // root granted -> its blocks and peers
	allow map[peer.ID]map[string]int // peer -> block (multihash) -> its grants holding it
	open  map[cid.Cid][]string       // root shared with every peer (Share) -> its blocks
	any   map[string]int             // block (multihash) -> shared roots holding it
}

type grant struct {
	blocks []string        // multihashes of the root's DAG, once each
	peers  map[peer.ID]int // grants of the root to the peer
}

func newGrants() *grants {
	return &grants{roots: map[cid.Cid]*grant{}, allow: map[peer.ID]map[string]int{},
		open: map[cid.Cid][]string{}, any: map[string]int{}}
}

// allowed is the exchange's filter: whether p may have c's block.
func (g *grants) allowed(p peer.ID, c cid.Cid) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.allow[p][keyOf(c)] > 0 || g.any[keyOf(c)] > 0
}

// Grant lets peers fetch the blocks of root's DAG from this peer, until
// Revoke. Every other peer asking for them is told this peer has none. The
// DAG must be whole in the store (added or fetched); its blocks are
// listed once here, and the list goes with the root's last grant.
func (s *Service) Grant(ctx context.Context, root cid.Cid, peers ...peer.ID) error {
	g := s.grants
	g.mu.Lock()
	gr := g.roots[root]
	g.mu.Unlock()
	if gr == nil {
		keys, err := s.blocksOf(ctx, root)
		if err != nil {
			return err
		}
		gr = &grant{blocks: keys, peers: map[peer.ID]int{}}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if had := g.roots[root]; had != nil {
		gr = had // granted meanwhile
	}
	g.roots[root] = gr
	for _, p := range peers {
		if gr.peers[p]++; gr.peers[p] > 1 {
			continue
		}
		m := g.allow[p]
		if m == nil {
			m = map[string]int{}
			g.allow[p] = m
		}
		for _, k := range gr.blocks {
			m[k]++
		}
	}
	return nil
}

// Revoke undoes one Grant of root to each of peers.
func (s *Service) Revoke(root cid.Cid, peers ...peer.ID) {
	g := s.grants
	g.mu.Lock()
	defer g.mu.Unlock()
	gr := g.roots[root]
	if gr == nil {
		return
	}
	for _, p := range peers {
		if gr.peers[p] == 0 {
			continue
		}
		if gr.peers[p]--; gr.peers[p] > 0 {
			continue
		}
		delete(gr.peers, p)
		m := g.allow[p]
		for _, k := range gr.blocks {
			if m[k]--; m[k] <= 0 {
				delete(m, k)
			}
		}
		if len(m) == 0 {
			delete(g.allow, p)
		}
	}
	if len(gr.peers) == 0 {
		delete(g.roots, root)
	}
}

// blocksOf lists the blocks of root's DAG, which must be in the store:
// only its dag-pb nodes are read (a raw leaf's CID is in its parent).
func (s *Service) blocksOf(ctx context.Context, root cid.Cid) ([]string, error) {
	seen := map[cid.Cid]bool{root: true}
	var keys []string
	queue := []cid.Cid{root}
	for len(queue) > 0 {
		c := queue[0]
		queue = queue[1:]
		if err := checkCID(c); err != nil {
			return nil, err
		}
		keys = append(keys, keyOf(c))
		if c.Type() == cid.Raw {
			continue
		}
		b, err := s.store.Get(ctx, c)
		if err != nil {
			return nil, fmt.Errorf("content: grant %s: block %s is not in this peer's store (add or fetch the root first): %w", root, c, err)
		}
		links, err := linksOf(b)
		if err != nil {
			return nil, fmt.Errorf("content: grant %s: %w", root, err)
		}
		for _, l := range links {
			if !seen[l] {
				seen[l] = true
				queue = append(queue, l)
			}
		}
	}
	return keys, nil
}
