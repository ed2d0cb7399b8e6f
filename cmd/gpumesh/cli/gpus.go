package cli

import (
	"context"
	"fmt"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/gpumesh/gpumesh/gossip"
	"github.com/gpumesh/gpumesh/internal/text"
	"github.com/gpumesh/gpumesh/node"
	"github.com/spf13/cobra"
)

func gpusCmd(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "gpus",
		Short: "This peer's GPUs, and GPUs offered in the swarm",
	}
	var lo output
	local := &cobra.Command{
		Use:   "local",
		Short: "Show the GPUs this peer has and the offer it publishes",
		RunE: func(c *cobra.Command, _ []string) error {
			if err := lo.check(); err != nil {
				return err
			}
			return withClient(c, g, func(ctx context.Context, cl *node.Client) error {
				l, err := cl.LocalGPUs(ctx)
				if err != nil {
					return err
				}
				return lo.print(g.stdout, l, func() { printLocal(g, l) })
			})
		},
	}
	lo.register(local)

	var fo output
	var model, region, maxPrice string
	var minVRAM, count int
	var minScore float64
	find := &cobra.Command{
		Use:   "find",
		Short: "Find live GPU offers in the swarm, cheapest first, with each provider's score",
		Example: `  gpumesh gpus find --model H100 --min-vram 80 --count 8
  gpumesh gpus find --min-score 0.8
  gpumesh gpus find --region eu -o json`,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := fo.check(); err != nil {
				return err
			}
			q := node.FindQuery{Model: model, Region: region, MinVRAMGB: minVRAM, Count: count, MaxPrice: maxPrice, MinScore: minScore}
			// The node checks max-price in its own price unit.
			if err := q.Check(); err != nil {
				return usageError{err}
			}
			return withClient(c, g, func(ctx context.Context, cl *node.Client) error {
				res, err := cl.FindGPUs(ctx, q)
				if err != nil {
					return err
				}
				return fo.print(g.stdout, res, func() { printFind(g, res, count) })
			})
		},
	}
	f := find.Flags()
	f.StringVar(&model, "model", "", "GPU model (H100) or class (H100-80GB)")
	f.IntVar(&minVRAM, "min-vram", 0, "memory per GPU, GB")
	f.IntVar(&count, "count", 0, "GPUs needed")
	f.StringVar(&region, "region", "", "region label prefix (e.g. eu)")
	f.StringVar(&maxPrice, "max-price", "", "highest ask per GPU-hour, in tokens of the node's price unit (e.g. 2.50)")
	f.Float64Var(&minScore, "min-score", 0, "lowest provider score, 0..1 (a provider nobody has seen scores 0.8; see `gpumesh provider show`)")
	fo.register(find)
	c.AddCommand(local, find)
	return c
}

func printLocal(g *globals, l node.LocalGPUs) {
	w := g.stdout
	m := l.Inventory.Machine
	fmt.Fprintf(w, "host:    %s/%s, %d CPUs, %.1f GiB memory\n", m.OS, m.Arch, m.CPUs, float64(m.MemoryBytes)/(1<<30))
	if m.Driver != "" {
		fmt.Fprintf(w, "driver:  %s (CUDA %s), source %s\n", m.Driver, m.CUDA, l.Inventory.Source)
	}
	if len(l.Inventory.GPUs) == 0 {
		fmt.Fprintf(w, "no GPUs: %s\n", l.Inventory.Note)
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "#\tCLASS\tNAME\tMEMORY\tFREE\tCOMPUTE\tMIG\tUTIL\tUUID")
	for _, gp := range l.Inventory.GPUs {
		util := "-"
		if gp.Utilization >= 0 {
			util = fmt.Sprintf("%d%%", gp.Utilization)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%.1f GiB\t%.1f GiB\t%s\t%v\t%s\t%s\n", gp.Index, gp.Class, gp.Name,
			float64(gp.MemoryTotal)/(1<<30), float64(gp.MemoryFree)/(1<<30), gp.ComputeCapability, gp.MIG, util, gp.UUID)
	}
	tw.Flush()
	switch {
	case l.Offer != nil:
		fmt.Fprintf(w, "offer:   %d GPUs available, published %s ago, valid until %s\n",
			l.Offer.AvailableGPUs(), time.Since(l.PublishedAt).Round(time.Second), l.Offer.ExpiresAt().Format(time.RFC3339))
	case l.Error != "":
		fmt.Fprintf(w, "offer:   not published yet: %s\n", l.Error)
	default:
		fmt.Fprintln(w, "offer:   not published yet")
	}
	fmt.Fprintf(w, "in use:  %d of %d GPUs run jobs\n", len(l.InUse), len(l.Inventory.GPUs))
	for _, e := range l.Ended {
		fmt.Fprintf(w, "ended at restart %s: job %s rank %d (%s, %d GPUs): %s\n",
			e.Ended.Local().Format(time.DateTime), e.Job, e.Rank, e.Executor, e.GPUs, e.Reason)
	}
}

func printFind(g *globals, found node.GPUsFound, count int) {
	w := g.stdout
	res := found.FindResult
	if len(res.Matches) > 0 {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "PROVIDER\tCLASS\tAVAILABLE\tVRAM\tCOMPUTE\tREGION\tPRICE/GPU-H\tSCORE")
		for _, m := range res.Matches {
			price := "-"
			if m.GPU.Price > 0 {
				price = strconv.FormatUint(m.GPU.Price, 10)
				if u, err := gossip.ParseUnit(m.Offer.Token); err == nil && m.Offer.Token != "" {
					price = u.Format(m.GPU.Price) + " " + u.Token
				}
			}
			region := text.Line(m.Offer.Region)
			if region == "" {
				region = "-"
			}
			score := "-"
			if s, ok := found.Scores[m.Offer.Provider.String()]; ok {
				score = scoreText(s)
			}
			fmt.Fprintf(tw, "%s\t%s\t%d/%d\t%d GB\t%s\t%s\t%s\t%s\n", m.Offer.Provider, text.Line(m.GPU.Class), m.GPU.Available, m.GPU.Total,
				m.GPU.VRAMGB, text.Line(m.GPU.Compute), region, price, score)
		}
		tw.Flush()
	}
	if res.Named {
		fmt.Fprintf(w, "found %s from %s (the cheapest %d the price board lists) in %s",
			plural(res.GPUs, "GPU"), plural(res.Providers, "provider"), res.Indexed, res.Elapsed.Round(time.Millisecond))
	} else {
		fmt.Fprintf(w, "found %s from %s (%d indexed under %s) in %s",
			plural(res.GPUs, "GPU"), plural(res.Providers, "provider"), res.Indexed, res.IndexKey, res.Elapsed.Round(time.Millisecond))
	}
	if count > 0 {
		if res.Enough {
			fmt.Fprintf(w, "; enough for %d", count)
		} else {
			fmt.Fprintf(w, "; need %d", count)
		}
	}
	fmt.Fprintln(w)
	if found.BelowScore > 0 {
		fmt.Fprintf(w, "%s left out: their providers score below %g\n", plural(found.BelowScore, "offer"), found.MinScore)
	}
	if res.Named {
		fmt.Fprintln(w, "the cheapest offers that make the count; every offer: leave out --count")
	}
	if res.Partial {
		fmt.Fprintln(w, "partial: the search was cut short (time, or too many providers); narrow it with --model, --min-vram or --region")
	}
	if res.Queried == 0 && res.Indexed == 0 {
		fmt.Fprintln(w, "no peer answered: is this peer connected to the swarm? (see `gpumesh peers`)")
	}
}

// plural writes "1 GPU", "2 GPUs".
func plural(n int, noun string) string {
	if n == 1 {
		return fmt.Sprintf("%d %s", n, noun)
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
