package cli

import (
	"context"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/gpumesh/gpumesh/internal/text"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/reputation"
	"github.com/spf13/cobra"
)

func providerCmd(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "provider",
		Short: "What this peer knows of a provider: its score and the evidence behind it",
	}
	var o output
	var refresh bool
	show := &cobra.Command{
		Use:   "show PEER",
		Short: "Show a provider's score, how it was computed, and the evidence it counts",
		Long: `Show a provider's score and the evidence behind it: the runs of this
peer's own jobs on it (finished, failed by the provider, lost) and the
anchored receipts other peers co-signed with it, each checked on Solana
(signatures, Merkle proof, and what its consumer paid) before it counts.
The node fetches the provider's receipts when they are older than 10
minutes, or with --refresh.`,
		Example: `  gpumesh provider show 12D3KooW...
  gpumesh provider show 12D3KooW... --refresh -o json`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if err := o.check(); err != nil {
				return err
			}
			return withClient(c, g, func(ctx context.Context, cl *node.Client) error {
				rep, err := cl.Provider(ctx, args[0], refresh)
				if err != nil {
					return err
				}
				return o.print(g.stdout, rep, func() { printProvider(g, rep) })
			})
		},
	}
	show.Flags().BoolVar(&refresh, "refresh", false, "fetch and check the provider's anchored receipts now")
	o.register(show)
	c.AddCommand(show)
	return c
}

func scoreText(s reputation.Score) string {
	evidence := s.Finished + s.ProviderFailed + s.Lost + s.Counted + s.Refused
	if evidence == 0 {
		return fmt.Sprintf("%.2f (no evidence)", s.Score)
	}
	return fmt.Sprintf("%.2f (%d/%d", s.Score, s.Finished, s.Finished+s.ProviderFailed+s.Lost) + func() string {
		out := ""
		if s.Weight > 0 {
			out += fmt.Sprintf(" +%.1f paid", s.Weight)
		}
		if s.Refused > 0 {
			out += fmt.Sprintf(", %d refused", s.Refused)
		}
		return out
	}() + ")"
}

func printProvider(g *globals, r node.ProviderReport) {
	w := g.stdout
	s := r.Score
	fmt.Fprintf(w, "provider:  %s\naddress:   %s\n", r.Peer, r.Address)
	fmt.Fprintf(w, "score:     %.3f\n", s.Score)
	fmt.Fprintf(w, "first-hand runs of this peer's jobs: %d finished (%d receipts co-signed), %d failed by the provider, %d lost\n",
		s.Finished, s.Cosigned, s.ProviderFailed, s.Lost)
	fmt.Fprintf(w, "awards refused (or not answered) after bidding, in this peer's negotiations: %d (weighing %.1f failed runs)\n", s.Refused, s.RefusedWeight)
	fmt.Fprintf(w, "third-party receipts, anchored and checked: %d shown, %d paid for (weight %.3f from %s, %d units paid), %d that count for nothing (not co-signed, self-paid, or this peer's own)\n",
		s.Receipts, s.Counted, s.Weight, plural(s.Consumers, "consumer"), s.PaidTotal, s.Uncountable)
	fmt.Fprintf(w, "how:       a receipt counts as min(1, paid / %d) runs, at most %g per consumer; the prior is %g finished and %g failed\n",
		s.FullWeight, s.PerConsumer, s.PriorFinished, s.PriorFailed)
	fmt.Fprintf(w, "formula:   %s\n", s.Formula)
	switch {
	case r.FetchError != "":
		fmt.Fprintf(w, "receipts:  %s\n", text.Line(r.FetchError))
	case !r.Fetched.IsZero():
		fmt.Fprintf(w, "receipts:  fetched %s ago: %d shown of %d anchored\n", time.Since(r.Fetched).Round(time.Second), r.Shown, r.Total)
	}
	for _, b := range r.Bad {
		fmt.Fprintf(w, "  did not hold: %s\n", text.Line(b))
	}
	if len(r.Runs) > 0 {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "RUN\tOUTCOME\tENDED\tCO-SIGNED\tWHY")
		for _, run := range r.Runs {
			why := text.Line(run.Reason)
			if why == "" {
				why = "-"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%v\t%s\n", text.Line(run.Key), run.Outcome, time.UnixMilli(run.At).Local().Format(time.DateTime), run.Cosigned, why)
		}
		tw.Flush()
	}
	if len(r.Receipts) > 0 {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "RECEIPT\tCONSUMER\tAMOUNT\tPAID\tCO-SIGNED\tANCHORED IN")
		for _, rc := range r.Receipts {
			fmt.Fprintf(tw, "%s\t%s\t%d %s\t%d\t%v\tslot %d\n", text.Line(rc.Key), rc.Consumer, rc.Amount, text.Line(rc.Unit), rc.Paid, rc.Cosigned, rc.Slot)
		}
		tw.Flush()
	}
}
