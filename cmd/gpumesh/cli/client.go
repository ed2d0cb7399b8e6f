package cli

import (
	"context"
	"errors"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/gpumesh/gpumesh/node"
	"github.com/spf13/cobra"
)

func idCmd(g *globals) *cobra.Command {
	var o output
	c := &cobra.Command{
		Use:   "id",
		Short: "Show the running peer's ID, Solana address, addresses and swarm",
		RunE: func(c *cobra.Command, _ []string) error {
			if err := o.check(); err != nil {
				return err
			}
			return withClient(c, g, func(ctx context.Context, cl *node.Client) error {
				info, err := cl.ID(ctx)
				if err != nil {
					return err
				}
				return o.print(g.stdout, info, func() {
					swarm := info.Swarm
					if info.Private {
						swarm += " (private)"
					}
					fmt.Fprintf(g.stdout, "peer ID:         %s\nSolana address:  %s\nswarm:           %s\nversion:         %s\naddresses:\n",
						info.PeerID, info.SolanaAddress, swarm, info.Version)
					for _, a := range info.Addrs {
						fmt.Fprintf(g.stdout, "  %s\n", a)
					}
				})
			})
		},
	}
	o.register(c)
	return c
}

func peersCmd(g *globals) *cobra.Command {
	var o output
	c := &cobra.Command{
		Use:   "peers",
		Short: "List the peers the running node is connected to",
		RunE: func(c *cobra.Command, _ []string) error {
			if err := o.check(); err != nil {
				return err
			}
			return withClient(c, g, func(ctx context.Context, cl *node.Client) error {
				peers, err := cl.Peers(ctx)
				if err != nil {
					return err
				}
				return o.print(g.stdout, peers, func() {
					if len(peers) == 0 {
						fmt.Fprintln(g.stdout, "no peers connected")
						return
					}
					tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
					fmt.Fprintln(tw, "PEER\tDIRECTION\tLATENCY\tADDRESS\tAGENT")
					for _, p := range peers {
						lat := "-"
						if p.LatencyMS > 0 {
							lat = fmt.Sprintf("%.1fms", p.LatencyMS)
						}
						fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", p.PeerID, p.Direction, lat, joinOr(p.Addrs, ","), p.Agent)
					}
					tw.Flush()
					fmt.Fprintf(g.stdout, "%d peers\n", len(peers))
				})
			})
		},
	}
	o.register(c)
	return c
}

func statusCmd(g *globals) *cobra.Command {
	var o output
	var wait time.Duration
	c := &cobra.Command{
		Use:   "status",
		Short: "Show how the running node is doing",
		Long: `Show how the running node is doing. With --wait, wait up to that long for
the node to start answering (for scripts that start a node and go on).`,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := o.check(); err != nil {
				return err
			}
			st, err := waitStatus(c.Context(), g, wait)
			if err != nil {
				return err
			}
			return o.print(g.stdout, st, func() {
				fmt.Fprintf(g.stdout, "peer ID:      %s\nswarm:        %s\nversion:      %s\nuptime:       %s\npeers:        %d\n",
					st.PeerID, st.Swarm, st.Version, time.Duration(st.UptimeSec*float64(time.Second)).Round(time.Second), st.Peers)
				printReach(g.stdout, st.Reach)
				fmt.Fprintf(g.stdout, "gossip peers: %d\n", st.GossipPeers)
				if len(st.Bootstrap) > 0 {
					fmt.Fprintln(g.stdout, "bootstrap:")
					for _, b := range st.Bootstrap {
						state := "connected"
						switch {
						case b.Attempts == 0:
							state = "not tried yet"
						case !b.Connected:
							state = "unreachable: " + b.Error
						}
						fmt.Fprintf(g.stdout, "  %s  %s\n", b.Peer, state)
					}
				}
				printRelays(g.stdout, st)
			})
		},
	}
	c.Flags().DurationVar(&wait, "wait", 0, "wait up to this long for the node to answer (e.g. 10s)")
	o.register(c)
	return c
}

// waitStatus asks for the node's status, retrying while no node answers
// until wait has passed.
func waitStatus(ctx context.Context, g *globals, wait time.Duration) (node.Status, error) {
	ctx, cancel := context.WithTimeout(ctx, wait+30*time.Second)
	defer cancel()
	deadline := time.Now().Add(wait)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		cl, err := g.client()
		if err == nil {
			var st node.Status
			if st, err = cl.Status(ctx); err == nil {
				return st, nil
			}
		}
		if !errors.Is(err, node.ErrNoNode) || time.Now().After(deadline) {
			return node.Status{}, err
		}
		select {
		case <-ctx.Done():
			return node.Status{}, ctx.Err()
		case <-tick.C:
		}
	}
}
