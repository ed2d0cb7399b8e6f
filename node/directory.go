package node

import (
	"context"
	"net/http"
)

// directoryState is the node's part of the GPU directory: the local GPU
// inventory and the offers this peer publishes. Filled in by the directory work.
type directoryState struct{}

// startDirectory finds the local GPUs and starts publishing offers.
func (n *Node) startDirectory(ctx context.Context) error { return nil }

// closeDirectory withdraws this peer's offers and stops publishing.
func (n *Node) closeDirectory() error { return nil }

// directoryRoutes adds the directory's local API calls.
func (n *Node) directoryRoutes(mux *http.ServeMux) {}

// OffersChanged asks the directory to republish this peer's offers now (a
// price or capacity changed). It must not block.
func (n *Node) OffersChanged() {}

// LocalUtilization is the fraction (0..1) of this peer's GPUs in use, per
// GPU class; a class this peer lacks is absent.
func (n *Node) LocalUtilization() map[string]float64 { return nil }
