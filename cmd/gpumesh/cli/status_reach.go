package cli

import (
	"fmt"
	"io"
	"strings"

	"github.com/gpumesh/gpumesh/node"
)

// printReach writes the status lines on how others reach this peer:
// AutoNAT's verdict, and each half of the directory with its mode and
// routing table.
func printReach(w io.Writer, r node.Reach) {
	verdict := "unknown yet"
	switch r.Reachability {
	case node.ReachPublic:
		verdict = "reachable: peers on the internet can dial this peer (AutoNAT)"
	case node.ReachPrivate:
		verdict = "behind NAT: peers on the internet cannot dial this peer (AutoNAT)"
	}
	if r.Note != "" {
		verdict += " (" + r.Note + ")"
	}
	fmt.Fprintf(w, "reachability: %s\n", verdict)
	var halves []string
	for _, h := range r.DHT {
		mode := "client"
		if h.Server {
			mode = "server"
		}
		name := strings.ToUpper(h.Name)
		if h.Name == "swarm" {
			name = "swarm"
		}
		halves = append(halves, fmt.Sprintf("%s %s, %d peers", name, mode, h.Peers))
	}
	fmt.Fprintf(w, "dht:          %s\n", strings.Join(halves, "; "))
}
