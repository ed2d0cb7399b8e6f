package dht

import (
	"context"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Provide announces that this peer has the content named c (a provider
// record under c, like the class index's): the content layer's routing.
// announce false only notes it in this peer's own shard.
func (d *Directory) Provide(ctx context.Context, c cid.Cid, announce bool) error {
	return d.kad.Provide(ctx, c, announce)
}

// FindProvidersAsync finds up to count peers that announced c (0: all it
// finds before ctx ends).
func (d *Directory) FindProvidersAsync(ctx context.Context, c cid.Cid, count int) <-chan peer.AddrInfo {
	return d.kad.FindProvidersAsync(ctx, c, count)
}
