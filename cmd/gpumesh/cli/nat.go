package cli

import (
	"fmt"
	"io"
	"time"

	"github.com/gpumesh/gpumesh/node"
	"github.com/spf13/pflag"
)

// relayFlags are `gpumesh node`'s flags of the relay service.
type relayFlags struct {
	service  string
	maxRes   int
	data     sizeValue
	duration time.Duration
}

func (r *relayFlags) register(f *pflag.FlagSet) {
	f.StringVar(&r.service, "relay-service", node.RelayAuto, "relay for peers behind NAT: auto (once AutoNAT finds this peer publicly reachable), on, or off; in a private swarm it relays for members only")
	f.IntVar(&r.maxRes, "relay-max-reservations", node.DefaultRelayReservations, "with the relay service: peers that may hold a relay reservation at once")
	r.data = sizeValue{node.DefaultRelayData}
	f.Var(&r.data, "relay-data", "with the relay service: most bytes relayed each way on one relayed connection, e.g. 128KiB (enough to find a peer and punch a hole to it)")
	f.DurationVar(&r.duration, "relay-duration", node.DefaultRelayDuration, "with the relay service: longest life of one relayed connection")
}

func (r *relayFlags) apply(cfg *node.Config) {
	cfg.RelayService = r.service
	cfg.RelayMaxReservations = r.maxRes
	cfg.RelayData = r.data.n
	cfg.RelayDuration = r.duration
}

// printRelays writes status's lines on relays and how each peer is reached.
func printRelays(w io.Writer, st node.Status) {
	fmt.Fprintf(w, "relay service: %s\n", st.Relay.Service)
	if len(st.Relay.Relays) > 0 {
		fmt.Fprintln(w, "relays in use:")
		for _, r := range st.Relay.Relays {
			fmt.Fprintf(w, "  %s\n", r)
		}
	}
	if len(st.Connections) > 0 {
		fmt.Fprintln(w, "connections:")
		for _, c := range st.Connections {
			fmt.Fprintf(w, "  %s  %s\n", c.Peer, c)
		}
	}
}
