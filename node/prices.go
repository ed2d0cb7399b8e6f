package node

import (
	"context"
	"net/http"
)

// priceState is the node's part of the spot market: the price board fed by
// gossip and this peer's pricing policy. Filled in by the prices work.
type priceState struct{}

// startPrices joins the swarm's price topic and starts the pricing policy.
func (n *Node) startPrices(ctx context.Context) error { return nil }

// closePrices leaves the price topic.
func (n *Node) closePrices() error { return nil }

// priceRoutes adds the price board's local API calls.
func (n *Node) priceRoutes(mux *http.ServeMux) {}

// Ask is this peer's asking price for one GPU-hour of class, in the swarm
// token's smallest unit; ok is false when the peer has no price for it.
func (n *Node) Ask(class string) (price uint64, ok bool) { return 0, false }
