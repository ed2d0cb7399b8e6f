package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/gpumesh/gpumesh/chain"
	"github.com/gpumesh/gpumesh/gossip"
	"github.com/gpumesh/gpumesh/node"
	"github.com/spf13/cobra"
)

func proofCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "proof", Short: "Proofs of work anchored on Solana: list, fetch, verify anywhere"}

	var rpcURL string
	verify := &cobra.Command{
		Use:   "verify FILE...",
		Short: "Check proof files: both signatures of the receipt, the Merkle path, and the anchoring transaction",
		Long: `Check proof files with no mesh and no data dir: the receipt's provider and
consumer signatures, the Merkle path from the receipt to the batch's root,
and, with one RPC call, that the memo transaction carrying the root exists,
succeeded and was signed by the proof's payer. Exit 1 if any proof fails.

A receipt the consumer did not countersign (it refused, left, or did not
answer) is anchored by its provider with the provider's signed statement of
why; verify shows it as "NOT countersigned", with that reason: the record
shows who walked away, in the provider's words.`,
		Example: `  gpumesh proof verify 3f2a...-0-0.proof.json --solana-rpc https://api.devnet.solana.com`,
		Args:    cobra.MinimumNArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if rpcURL == "" {
				return usageError{errors.New("say which Solana RPC to ask: --solana-rpc URL (or env GPUMESH_SOLANA_RPC)")}
			}
			if u, err := url.Parse(rpcURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") {
				return usageError{fmt.Errorf("--solana-rpc %q: want an http(s) URL", rpcURL)}
			}
			failed := 0
			for _, f := range args {
				data, err := readProofFile(f)
				if err == nil {
					ctx, cancel := context.WithTimeout(c.Context(), 30*time.Second)
					p, rec, a, verr := node.VerifyProof(ctx, rpcURL, data)
					cancel()
					err = verr
					if err == nil {
						r := rec.Receipt
						u, uerr := gossip.ParseUnit(r.Unit)
						if uerr != nil {
							u = gossip.DefaultUnit
						}
						fmt.Fprintf(g.stdout, "%s: OK: job %s member %d, %d %s GPUs for %.3f GPU-seconds, %s %s, exit %d\n",
							f, r.Job, r.Rank, r.GPUs, r.Class, r.GPUSeconds(), u.Format(r.Amount), u.Token, r.ExitCode)
						if un := rec.Unsigned; un != nil {
							fmt.Fprintf(g.stdout, "  signed by provider %s only: NOT countersigned by consumer %s\n", r.Provider, r.Consumer)
							fmt.Fprintf(g.stdout, "  the provider's signed word, %s: %s\n", time.UnixMilli(un.At).UTC().Format(time.RFC3339), un.Reason)
						} else {
							fmt.Fprintf(g.stdout, "  signed by provider %s and consumer %s\n", r.Provider, r.Consumer)
						}
						fmt.Fprintf(g.stdout, "  leaf %d of %d under root %s, anchored by %s in transaction %s (slot %d, fee %d lamports)\n",
							p.Index, p.Count, p.Root, a.Payer, p.Signature, a.Slot, a.Fee)
						continue
					}
				}
				failed++
				fmt.Fprintf(g.stdout, "%s: FAILED: %v\n", f, err)
			}
			if failed > 0 {
				return fmt.Errorf("%d of %d proofs failed", failed, len(args))
			}
			return nil
		},
	}
	verify.Flags().StringVar(&rpcURL, "solana-rpc", os.Getenv("GPUMESH_SOLANA_RPC"), "Solana JSON-RPC URL to check the anchoring transaction with (env GPUMESH_SOLANA_RPC)")

	var lo output
	var job string
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List this peer's receipts and where their anchoring stands",
		RunE: func(c *cobra.Command, _ []string) error {
			if err := lo.check(); err != nil {
				return err
			}
			return withClient(c, g, func(ctx context.Context, cl *node.Client) error {
				st, err := cl.Proofs(ctx, job)
				if err != nil {
					return err
				}
				return lo.print(g.stdout, st, func() {
					tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
					fmt.Fprintln(tw, "RECEIPT\tSTATUS")
					for _, p := range st.Proofs {
						fmt.Fprintf(tw, "%s\t%s\n", p.Key, p.Status)
					}
					tw.Flush()
					s := st.Stats
					fmt.Fprintf(g.stdout, "anchored %d receipts in %d transactions (%d lamports in fees); %d waiting for a batch, %d batches waiting for the chain at %s\n",
						s.Anchored, s.Txs, s.Fees, s.Pending, s.Batches, st.RPC)
					if s.Error != "" {
						fmt.Fprintf(g.stdout, "last problem: %s\n", s.Error)
					}
				})
			})
		},
	}
	ls.Flags().StringVar(&job, "job", "", "only this job's receipts")
	lo.register(ls)

	var outDir string
	get := &cobra.Command{
		Use:   "get JOB",
		Short: "Write the proofs of a job's anchored receipts (to -o DIR as <receipt>.proof.json, else to stdout)",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			return withClient(c, g, func(ctx context.Context, cl *node.Client) error {
				st, err := cl.Proofs(ctx, args[0])
				if err != nil {
					return err
				}
				var proofs []chain.Proof
				waiting := 0
				for _, p := range st.Proofs {
					if p.Status != "anchored" {
						waiting++
						continue
					}
					pr, err := cl.Proof(ctx, p.Key)
					if err != nil {
						return err
					}
					proofs = append(proofs, pr)
				}
				if len(proofs) == 0 {
					if waiting > 0 {
						return fmt.Errorf("job %s: %s not anchored yet; `gpumesh proof ls` shows where they stand", args[0], plural(waiting, "receipt"))
					}
					return fmt.Errorf("job %s: this peer anchors no receipt of it (proofs live on the providers that ran it)", args[0])
				}
				if outDir == "" {
					enc := json.NewEncoder(g.stdout)
					enc.SetIndent("", "  ")
					for _, p := range proofs {
						if err := enc.Encode(p); err != nil {
							return err
						}
					}
					return nil
				}
				if err := os.MkdirAll(outDir, 0o755); err != nil {
					return err
				}
				for _, p := range proofs {
					data, err := json.MarshalIndent(p, "", "  ")
					if err != nil {
						return err
					}
					path := filepath.Join(outDir, p.Key+".proof.json")
					if err := os.WriteFile(path, append(data, '\n'), 0o644); err != nil {
						return err
					}
					fmt.Fprintln(g.stdout, path)
				}
				if waiting > 0 {
					fmt.Fprintf(g.stdout, "%s not anchored yet\n", plural(waiting, "receipt"))
				}
				return nil
			})
		},
	}
	get.Flags().StringVarP(&outDir, "output", "o", "", "folder to write the proof files into")
	c.AddCommand(verify, ls, get)
	return c
}

func readProofFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, chain.MaxProofSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > chain.MaxProofSize {
		return nil, fmt.Errorf("%s: larger than a proof (%d bytes at most)", path, chain.MaxProofSize)
	}
	return data, nil
}
