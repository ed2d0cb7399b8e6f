package cli

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"

	"github.com/gpumesh/gpumesh/node"
	"github.com/spf13/cobra"
)

func keyCmd(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "key",
		Short: "Make or show a peer key (a Solana CLI keypair file)",
		Long: `A peer's identity is one ed25519 key, stored as a Solana CLI keypair file
(a JSON array of 64 numbers). Its libp2p peer ID and its Solana address are
the same public key.`,
	}
	var out string
	var o output
	newCmd := &cobra.Command{
		Use:   "new",
		Short: "Make a new key (default: the data dir's key.json)",
		RunE: func(c *cobra.Command, _ []string) error {
			if err := o.check(); err != nil {
				return err
			}
			path := out
			if path == "" {
				path = (&node.DataDir{Path: g.dataDir}).Key()
			}
			id, err := node.NewIdentity()
			if err != nil {
				return err
			}
			if err := node.WriteKeyFile(path, id); err != nil {
				return err
			}
			return printKey(g, &o, path, id)
		},
	}
	newCmd.Flags().StringVar(&out, "out", "", "file to write (never overwritten)")
	o.register(newCmd)
	var so output
	showCmd := &cobra.Command{
		Use:   "show [FILE]",
		Short: "Show the peer ID and Solana address of a key (default: the data dir's)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if err := so.check(); err != nil {
				return err
			}
			path := (&node.DataDir{Path: g.dataDir}).Key()
			if len(args) == 1 {
				path = args[0]
			}
			id, err := node.ReadKeyFile(path)
			if err != nil {
				return err
			}
			return printKey(g, &so, path, id)
		},
	}
	so.register(showCmd)
	c.AddCommand(newCmd, showCmd)
	return c
}

// keyInfo is what key new and key show print.
type keyInfo struct {
	File          string `json:"file"`
	PeerID        string `json:"peerID"`
	SolanaAddress string `json:"solanaAddress"`
}

func printKey(g *globals, o *output, path string, id node.Identity) error {
	k := keyInfo{File: path, PeerID: id.PeerID.String(), SolanaAddress: id.SolanaAddress}
	return o.print(g.stdout, k, func() {
		fmt.Fprintf(g.stdout, "file:            %s\npeer ID:         %s\nSolana address:  %s\n", k.File, k.PeerID, k.SolanaAddress)
	})
}

func swarmCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "swarm", Short: "Bootstrap a private swarm"}
	var out string
	initCmd := &cobra.Command{
		Use:   "init",
		Short: "Make a swarm key for a new private swarm (default: the data dir's swarm.key)",
		Long: `Make a new pre-shared key in the swarm.key format of IPFS private networks.
Peers started with it connect only to peers that hold the same key.`,
		RunE: func(c *cobra.Command, _ []string) error {
			dir := &node.DataDir{Path: g.dataDir}
			path := out
			if path == "" {
				path = filepath.Join(g.dataDir, "swarm.key")
			}
			data, err := node.NewSwarmKey()
			if err != nil {
				return err
			}
			if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
				return err
			}
			f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("%s already exists: a swarm's key must not be replaced by accident; move it away or pick another path with --out", path)
			}
			if err != nil {
				return err
			}
			if _, err := f.Write(data); err != nil {
				f.Close()
				return err
			}
			if err := f.Close(); err != nil {
				return err
			}
			sw, err := node.ParseSwarmKey(data)
			if err != nil {
				return err
			}
			// The join command names this peer, so make its key now.
			if err := dir.Init(); err != nil {
				return err
			}
			id, err := node.ReadKeyFile(dir.Key())
			if err != nil {
				return err
			}
			fc, err := dir.LoadConfig()
			if err != nil {
				return err
			}
			port := fc.Port
			if port == 0 {
				port = node.DefaultPort
			}
			fmt.Fprintf(g.stdout, "Wrote the key of private swarm %s to %s (keep it secret).\n\n", sw.ID(), path)
			fmt.Fprintf(g.stdout, "Start this peer:\n  gpumesh node --data %s --swarm-key %s\n\n", g.dataDir, path)
			fmt.Fprintf(g.stdout, "Copy %s to each other machine, then run there:\n  gpumesh node --swarm-key %s --bootstrap /ip4/%s/tcp/%d/p2p/%s\n",
				filepath.Base(path), filepath.Base(path), hostIP(), port, id.PeerID)
			return nil
		},
	}
	initCmd.Flags().StringVar(&out, "out", "", "file to write (never overwritten)")
	c.AddCommand(initCmd)
	return c
}

// hostIP guesses the address other machines reach this one at: the first
// non-loopback IPv4 address of an interface that is up.
func hostIP() string {
	ifaces, err := net.Interfaces()
	if err == nil {
		for _, ifc := range ifaces {
			if ifc.Flags&net.FlagUp == 0 || ifc.Flags&net.FlagLoopback != 0 {
				continue
			}
			addrs, _ := ifc.Addrs()
			for _, a := range addrs {
				if ipn, ok := a.(*net.IPNet); ok && ipn.IP.To4() != nil {
					return ipn.IP.String()
				}
			}
		}
	}
	return "THIS-MACHINE-IP"
}
