package dht

import (
	"context"
	"errors"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"
)

// Provide announces that this peer has the content named c (a provider
// record under c, like the class index's) in every half with peers: the
// content layer's routing. announce false only notes it in this peer's own
// shards.
func (d *Directory) Provide(ctx context.Context, c cid.Cid, announce bool) error {
	var errs []error
	for _, x := range d.active() {
		if err := x.kad.Provide(ctx, c, announce); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// FindProvidersAsync finds up to count peers that announced c (0: all it
// finds before ctx ends), asking every half.
func (d *Directory) FindProvidersAsync(ctx context.Context, c cid.Cid, count int) <-chan peer.AddrInfo {
	return d.route.FindProvidersAsync(ctx, c, count)
}
