package node

import (
	"context"
	"sync"
	"time"

	"github.com/gpumesh/gpumesh/dht"
	"github.com/libp2p/go-libp2p/core/event"
	"github.com/libp2p/go-libp2p/core/network"
)

// reachState is what this peer knows of how others reach it: AutoNAT's
// latest verdicts, on the peer (v1) and on each of its addresses (v2).
type reachState struct {
	reachMu      sync.Mutex // guards the fields below
	reachability network.Reachability
	reachSince   time.Time // of the last verdict that changed it; zero: none yet
	reachable    []string  // addresses AutoNAT v2 confirmed dialable from outside
	unreachable  int       // addresses it found not dialable
}

// Reachability verdicts in GET /v0/status.
const (
	ReachPublic  = "public"  // AutoNAT: peers on the internet can dial this peer
	ReachPrivate = "private" // AutoNAT: they cannot (behind NAT or a firewall)
	ReachUnknown = "unknown" // no verdict yet, or AutoNAT is off
)

// Reach is how others reach this peer, in GET /v0/status: AutoNAT's
// verdict and, for each half of the GPU directory, whether this peer serves
// it and how many peers its routing table holds.
type Reach struct {
	Reachability string           `json:"reachability"` // ReachPublic, ReachPrivate or ReachUnknown
	Since        time.Time        `json:"since,omitzero"`
	Reachable    []string         `json:"reachable,omitempty"` // addresses confirmed dialable from outside
	Note         string           `json:"note,omitempty"`      // why the verdict is unknown
	DHT          []dht.HalfStatus `json:"dht"`                 // "lan" and "wan", or "swarm" in a private swarm
}

// startReach follows AutoNAT's verdicts until ctx ends. The host's event
// bus hands a new subscriber the last verdicts at once.
func (n *Node) startReach(ctx context.Context) error {
	sub, err := n.host.EventBus().Subscribe([]any{new(event.EvtLocalReachabilityChanged), new(event.EvtHostReachableAddrsChanged)})
	if err != nil {
		return err
	}
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		defer sub.Close()
		for {
			select {
			case <-ctx.Done():
				return
			case ev, ok := <-sub.Out():
				if !ok {
					return
				}
				n.reachMu.Lock()
				before := n.verdictLocked()
				switch ev := ev.(type) {
				case event.EvtLocalReachabilityChanged:
					n.reachability = ev.Reachability
				case event.EvtHostReachableAddrsChanged:
					n.reachable = addrStrings(ev.Reachable)
					n.unreachable = len(ev.Unreachable)
				}
				after := n.verdictLocked()
				if after != before {
					n.reachSince = time.Now()
				}
				n.reachMu.Unlock()
				if after != before {
					n.log.Info("reachability", "verdict", after)
				}
			}
		}
	}()
	return nil
}

// verdictLocked joins the two AutoNATs' findings: public when either found
// this peer dialable, private when v1 says so or v2 found only addresses
// that are not, else unknown. reachMu must be held.
func (n *Node) verdictLocked() string {
	switch {
	case n.reachability == network.ReachabilityPublic || len(n.reachable) > 0:
		return ReachPublic
	case n.reachability == network.ReachabilityPrivate || n.unreachable > 0:
		return ReachPrivate
	}
	return ReachUnknown
}

// reach reports AutoNAT's verdict and the directory's halves.
func (n *Node) reach() Reach {
	n.reachMu.Lock()
	out := Reach{Reachability: n.verdictLocked(), Since: n.reachSince, Reachable: n.reachable, DHT: []dht.HalfStatus{}}
	n.reachMu.Unlock()
	if out.Reachability == ReachUnknown {
		out.Since = time.Time{}
		switch {
		case n.cfg.NoNAT:
			out.Note = "AutoNAT is off (--nat=false)"
		case n.cfg.Swarm.Private():
			out.Note = "no AutoNAT verdict in a private swarm (no member dials others back for it)"
		default:
			out.Note = "AutoNAT has not decided yet: it needs a public address of this peer and peers that dial it back"
		}
	}
	if n.dht != nil {
		out.DHT = n.dht.Halves()
	}
	return out
}
