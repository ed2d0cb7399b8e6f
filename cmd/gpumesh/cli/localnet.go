package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/gpumesh/gpumesh/chain/localnet"
	"github.com/gpumesh/gpumesh/gossip"
	"github.com/spf13/cobra"
)

func localnetCmd(g *globals) *cobra.Command {
	var (
		port       int
		dir        string
		funds      []string
		tokenUnit  string
		tokenFunds []string
	)
	c := &cobra.Command{
		Use:   "localnet",
		Short: "Run a local Solana RPC (LiteSVM) for trying anchoring and payments, until interrupted",
		Long: `Run chain/localnet: a Solana JSON-RPC server on 127.0.0.1 backed by LiteSVM,
which runs the real System, SPL Token and Memo programs. Point peers at it
with --solana-rpc URL. It needs Node.js 20 and its npm packages
(make localnet). Its chain lives in memory: it starts empty every time.

With --token SYMBOL:DECIMALS it also makes a test SPL token mint (printed:
give it to the peers as --token-mint, with --price-unit SYMBOL:DECIMALS)
and --fund-token ADDRESS=AMOUNT mints whole tokens to an address's token
account; an address funded with tokens and not with --fund gets 1 SOL for
its fees too.`,
		Example: `  gpumesh localnet --port 8899 --fund $(gpumesh id -o json | jq -r .solanaAddress)=10
  gpumesh localnet --token USDC:6 --fund-token $(gpumesh id -o json | jq -r .solanaAddress)=1000`,
		Args: cobra.NoArgs,
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
			var unit gossip.Unit
			if tokenUnit != "" {
				var err error
				if unit, err = gossip.ParseUnit(tokenUnit); err != nil || unit.Token == "SOL" {
					return usageError{fmt.Errorf("--token %q: want SYMBOL:DECIMALS of a token other than SOL, e.g. USDC:6", tokenUnit)}
				}
			} else if len(tokenFunds) > 0 {
				return usageError{errors.New("--fund-token needs --token SYMBOL:DECIMALS (the test token to make), e.g. --token USDC:6")}
			}
			var tfs []fund
			for _, f := range tokenFunds {
				addr, amount, ok := strings.Cut(f, "=")
				n, err := unit.Parse(amount)
				if !ok || err != nil || n == 0 || addr == "" {
					return usageError{fmt.Errorf("--fund-token %q: want ADDRESS=%s, e.g. 8pfj...iRG=1000", f, unit.Token)}
				}
				tfs = append(tfs, fund{addr, n})
				if !slices.ContainsFunc(fs, func(f fund) bool { return f.addr == addr }) {
					fs = append(fs, fund{addr, 1e9}) // its fees
				}
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
			if tokenUnit != "" {
				mint, err := ln.CreateMint(sctx, unit.Decimals)
				if err != nil {
					return fmt.Errorf("--token %s: %w", unit, err)
				}
				fmt.Fprintf(g.stdout, "token %s: mint %s (peers: --price-unit %s --token-mint %s)\n", unit.Token, mint, unit, mint)
				for _, f := range tfs {
					if err := ln.MintTo(sctx, mint, f.addr, f.lamports); err != nil {
						return fmt.Errorf("--fund-token %s: %w", f.addr, err)
					}
					fmt.Fprintf(g.stdout, "funded %s with %s %s\n", f.addr, unit.Format(f.lamports), unit.Token)
				}
			}
			fmt.Fprintf(g.stdout, "Solana localnet at %s (Ctrl-C stops it; its chain is gone then)\n", ln.URL())
			<-ctx.Done()
			return nil
		},
	}
	c.Flags().IntVar(&port, "port", 8899, "port on 127.0.0.1 (0: any free one)")
	c.Flags().StringVar(&dir, "localnet-dir", os.Getenv("GPUMESH_LOCALNET_DIR"), "the chain/localnet folder of a gpumesh checkout (default: found beside the binary; env GPUMESH_LOCALNET_DIR)")
	c.Flags().StringArrayVar(&funds, "fund", nil, "ADDRESS=SOL to airdrop at start, repeatable")
	c.Flags().StringVar(&tokenUnit, "token", "", "make a test SPL token mint of SYMBOL:DECIMALS, e.g. USDC:6, and print its address")
	c.Flags().StringArrayVar(&tokenFunds, "fund-token", nil, "ADDRESS=AMOUNT of --token to mint at start, in whole tokens (1000, 2.5), repeatable")
	return c
}
