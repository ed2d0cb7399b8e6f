package cli

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/gpumesh/gpumesh/chain/localnet"
	"github.com/spf13/cobra"
)

func localnetCmd(g *globals) *cobra.Command {
	var (
		port  int
		dir   string
		funds []string
	)
	c := &cobra.Command{
		Use:   "localnet",
		Short: "Run a local Solana RPC (LiteSVM) for trying anchoring and payments, until interrupted",
		Long: `Run chain/localnet: a Solana JSON-RPC server on 127.0.0.1 backed by LiteSVM,
which runs the real System, SPL Token and Memo programs. Point peers at it
with --solana-rpc URL. It needs Node.js 20 and its npm packages
(make localnet). Its chain lives in memory: it starts empty every time.`,
		Example: `  gpumesh localnet --port 8899 --fund $(gpumesh id -o json | jq -r .solanaAddress)=10`,
		Args:    cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			type fund struct {
				addr     string
				lamports uint64
			}
			var fs []fund
			for _, f := range funds {
				addr, sol, ok := strings.Cut(f, "=")
				v, err := strconv.ParseFloat(sol, 64)
				if !ok || err != nil || v <= 0 || v > 1e6 || addr == "" {
					return usageError{fmt.Errorf("--fund %q: want ADDRESS=SOL, e.g. 8pfj...iRG=10", f)}
				}
				fs = append(fs, fund{addr, uint64(v * 1e9)})
			}
			ctx, stop := signal.NotifyContext(c.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			ln, err := localnet.Start(sctx, localnet.Options{Dir: dir, Port: port})
			if err != nil {
				return err
			}
			defer ln.Close()
			for _, f := range fs {
				if err := ln.Airdrop(sctx, f.addr, f.lamports); err != nil {
					return fmt.Errorf("--fund %s: %w", f.addr, err)
				}
				fmt.Fprintf(g.stdout, "funded %s with %.9g SOL\n", f.addr, float64(f.lamports)/1e9)
			}
			fmt.Fprintf(g.stdout, "Solana localnet at %s (Ctrl-C stops it; its chain is gone then)\n", ln.URL())
			<-ctx.Done()
			return nil
		},
	}
	c.Flags().IntVar(&port, "port", 8899, "port on 127.0.0.1 (0: any free one)")
	c.Flags().StringVar(&dir, "localnet-dir", os.Getenv("GPUMESH_LOCALNET_DIR"), "the chain/localnet folder of a gpumesh checkout (default: found beside the binary; env GPUMESH_LOCALNET_DIR)")
	c.Flags().StringArrayVar(&funds, "fund", nil, "ADDRESS=SOL to airdrop at start, repeatable")
	return c
}
