package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/gpumesh/gpumesh/gossip"
	"github.com/gpumesh/gpumesh/node"
	"github.com/spf13/cobra"
)

// maxDepthLines bounds the depth table of `prices --class`.
const maxDepthLines = 20

func pricesCmd(g *globals) *cobra.Command {
	var (
		o        output
		class    string
		watch    bool
		interval time.Duration
	)
	c := &cobra.Command{
		Use:   "prices",
		Short: "Show the swarm's spot prices per GPU class, as this peer sees them",
		Long: `Show the swarm's spot prices per GPU class: the price board this peer
builds from the providers' gossiped quotes. Prices are per GPU-hour in the
swarm's token.

BEST is the cheapest ask with GPUs free and GPUS the GPUs free, from every
provider's quote as soon as it arrives. MEDIAN, MEAN (trimmed) and EWMA are a
robust index: they weigh each quote by the GPUs it offers (up to a cap) and by
how long its provider has quoted: a new provider counts after a probation, and
all new providers together weigh little until they have quoted for an hour;
"(1 of 4 counted)" beside them says how many quotes they count. In a private
swarm every quote counts at once. With --class, DEPTH lists the GPUs available
at or below each ask.

--watch redraws the table every --interval until Ctrl-C.`,
		Example: `  gpumesh prices
  gpumesh prices --class H100-80GB
  gpumesh prices --watch
  gpumesh prices -o json`,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := o.check(); err != nil {
				return err
			}
			if class != "" && !gossip.ValidClass(class) {
				return usageError{fmt.Errorf("--class %q: want a GPU class such as H100-80GB (gpumesh gpus local lists this peer's)", class)}
			}
			if interval < 100*time.Millisecond {
				return usageError{fmt.Errorf("--interval %v: want at least 100ms", interval)}
			}
			return withClient(c, g, func(ctx context.Context, cl *node.Client) error {
				show := func(p node.Prices) error {
					return o.print(g.stdout, p, func() { printPrices(g.stdout, p, class) })
				}
				if !watch {
					p, err := cl.Prices(ctx, class)
					if err != nil {
						return err
					}
					return show(p)
				}
				ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
				defer stop()
				return watchPrices(ctx, g.stdout, interval, o.format == "json", func() (node.Prices, error) {
					return cl.Prices(ctx, class)
				}, class)
			})
		},
	}
	c.Flags().StringVar(&class, "class", "", "only this GPU class, with its depth (e.g. H100-80GB)")
	c.Flags().BoolVar(&watch, "watch", false, "redraw every --interval until Ctrl-C")
	c.Flags().DurationVar(&interval, "interval", 2*time.Second, "refresh period of --watch")
	o.register(c)
	return c
}

// watchPrices redraws the board every interval until ctx ends. On a
// terminal it clears the screen first; elsewhere (a pipe, a file) it
// appends, and with JSON writes one document per line.
func watchPrices(ctx context.Context, w io.Writer, interval time.Duration, asJSON bool, get func() (node.Prices, error), class string) error {
	clear := isTerminal(w) && !asJSON
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		p, err := get()
		if ctx.Err() != nil {
			return nil // Ctrl-C
		}
		if err != nil {
			return err
		}
		var buf bytes.Buffer
		switch {
		case asJSON:
			if err := json.NewEncoder(&buf).Encode(p); err != nil {
				return err
			}
		case clear:
			buf.WriteString("\x1b[H\x1b[2J")
			fmt.Fprintf(&buf, "%s  (every %v, Ctrl-C to stop)\n\n", time.Now().Format("15:04:05"), interval)
			printPrices(&buf, p, class)
		default:
			fmt.Fprintf(&buf, "--- %s\n", time.Now().Format(time.RFC3339))
			printPrices(&buf, p, class)
		}
		if _, err := w.Write(buf.Bytes()); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// printPrices writes the board as a table; with a class, that class in
// full with its depth.
func printPrices(w io.Writer, p node.Prices, class string) {
	u := p.Unit()
	price := func(v uint64) string {
		if v == 0 {
			return "-"
		}
		return u.Format(v)
	}
	uncounted := false
	// counted is the label beside the index's figures when some quotes
	// are not in it (new providers on probation, providers with no GPU free).
	counted := func(q gossip.Quote) string {
		if q.Counted == q.Providers {
			return ""
		}
		uncounted = true
		return fmt.Sprintf("(%d of %d counted)", q.Counted, q.Providers)
	}
	switch {
	case len(p.Classes) == 0 && class != "":
		fmt.Fprintf(w, "no quotes for %s in this swarm yet\n", class)
	case len(p.Classes) == 0:
		fmt.Fprintln(w, "no prices yet: no provider has quoted in this swarm (a provider quotes with `gpumesh node --price fixed:2.10`)")
	case class != "":
		q := p.Classes[0]
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintf(tw, "class:\t%s\n", q.Class)
		fmt.Fprintf(tw, "providers:\t%d (%d counted in the index, %d at full weight)\n", q.Providers, q.Counted, q.Mature)
		fmt.Fprintf(tw, "GPUs:\t%d available\n", q.GPUs)
		fmt.Fprintf(tw, "best:\t%s (the cheapest ask with GPUs free)\n", price(q.Best))
		fmt.Fprintf(tw, "median:\t%s\n", strings.TrimSpace(price(q.Median)+" "+counted(q)))
		fmt.Fprintf(tw, "mean:\t%s (trimmed)\n", price(q.Mean))
		fmt.Fprintf(tw, "EWMA:\t%s (of the median)\n", price(q.EWMA))
		tw.Flush()
		if len(q.Depth) > 0 {
			fmt.Fprintln(w, "depth:")
			tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
			fmt.Fprintln(tw, "  ASK\tGPUS AT OR BELOW\t")
			levels := q.Depth
			if len(levels) > maxDepthLines { // the cheapest, then the whole
				levels = append(levels[:maxDepthLines-1:maxDepthLines-1], gossip.Level{}, levels[len(levels)-1])
			}
			for _, l := range levels {
				if l.Ask == 0 {
					fmt.Fprintln(tw, "  ...\t\t")
					continue
				}
				fmt.Fprintf(tw, "  %s\t%d\t\n", u.Format(l.Ask), l.GPUs)
			}
			tw.Flush()
		}
	default:
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "CLASS\tBEST\tGPUS\tPROVIDERS\tMEDIAN\tMEAN\tEWMA\t")
		for _, q := range p.Classes {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%s\t%s\t%s\n", q.Class, price(q.Best), q.GPUs, q.Providers, price(q.Median), price(q.Mean), price(q.EWMA), counted(q))
		}
		tw.Flush()
	}
	fmt.Fprintf(w, "prices in %s\n", u.PerHour())
	if uncounted {
		fmt.Fprintln(w, "BEST, GPUS and depth show every live ask at once; MEDIAN, MEAN and EWMA count a new provider after a probation, and none with no GPU free")
	}
	if len(p.Asks) > 0 {
		var asks []string
		for _, a := range p.Asks {
			asks = append(asks, fmt.Sprintf("%s %s for %d GPUs", a.Class, u.Format(a.Ask), a.Available))
		}
		fmt.Fprintf(w, "this peer asks %s", strings.Join(asks, ", "))
		if p.Policy != "" {
			fmt.Fprintf(w, " (policy %s)", p.Policy)
		}
		fmt.Fprintln(w)
	}
}
