package cli

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/gpumesh/gpumesh/gossip"
	"github.com/gpumesh/gpumesh/node"
	"github.com/spf13/cobra"
)

func jobCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "job", Short: "Submit jobs and follow them: a cluster is negotiated from any peer"}

	var so output
	var wait bool
	submit := &cobra.Command{
		Use:     "submit FILE",
		Short:   "Submit a job spec (YAML or JSON) and negotiate a GPU cluster for it",
		Args:    cobra.ExactArgs(1),
		Example: `  gpumesh job submit job.yaml --wait`,
		RunE: func(c *cobra.Command, args []string) error {
			if err := so.check(); err != nil {
				return err
			}
			data, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			format := "yaml"
			if strings.EqualFold(filepath.Ext(args[0]), ".json") {
				format = "json"
			}
			spec, err := node.ParseJobSpec(data, format)
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			return withClient(c, g, func(ctx context.Context, cl *node.Client) error {
				var job node.Job
				if err := cl.Post(ctx, "jobs", spec, &job); err != nil {
					return err
				}
				if !wait {
					return so.print(g.stdout, job, func() {
						fmt.Fprintf(g.stdout, "job %s submitted: negotiating a cluster of %d GPUs (follow it with `gpumesh job status %s`)\n",
							job.ID, job.Spec.Resources.GPUs, job.ID)
					})
				}
				if so.format == "text" {
					fmt.Fprintf(g.stdout, "job %s submitted; finding and negotiating %d GPUs...\n", job.ID, job.Spec.Resources.GPUs)
				}
				start := time.Now()
				tick := time.NewTicker(50 * time.Millisecond)
				defer tick.Stop()
				for job.State == node.JobNegotiating {
					select {
					case <-ctx.Done():
						return ctx.Err()
					case <-tick.C:
					}
					if err := cl.Get(ctx, "jobs/"+job.ID, &job); err != nil {
						return err
					}
				}
				if err := so.print(g.stdout, job, func() { printJob(g, job, time.Since(start)) }); err != nil {
					return err
				}
				if job.State != node.JobFormed {
					return fmt.Errorf("job %s %s: %s", job.ID, job.State, job.Reason)
				}
				return nil
			})
		},
	}
	submit.Flags().BoolVar(&wait, "wait", false, "wait until the cluster forms or the negotiation fails; exit 1 if it fails")
	so.register(submit)

	var lo output
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List the jobs submitted from this peer, newest first",
		RunE: func(c *cobra.Command, _ []string) error {
			if err := lo.check(); err != nil {
				return err
			}
			return withClient(c, g, func(ctx context.Context, cl *node.Client) error {
				var jobs []node.Job
				if err := cl.Get(ctx, "jobs", &jobs); err != nil {
					return err
				}
				return lo.print(g.stdout, jobs, func() {
					if len(jobs) == 0 {
						fmt.Fprintln(g.stdout, "no jobs yet: submit one with `gpumesh job submit job.yaml`")
						return
					}
					tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
					fmt.Fprintln(tw, "ID\tNAME\tSTATE\tGPUS\tMEMBERS\tCREATED")
					for _, j := range jobs {
						fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\n", j.ID, j.Spec.Name, j.State, j.Spec.Resources.GPUs, len(j.Members), j.Created.Local().Format(time.DateTime))
					}
					tw.Flush()
				})
			})
		},
	}
	lo.register(ls)

	var sto output
	status := &cobra.Command{
		Use:   "status ID",
		Short: "Show a job: its state, cluster members and price, or why it failed",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if err := sto.check(); err != nil {
				return err
			}
			return withClient(c, g, func(ctx context.Context, cl *node.Client) error {
				var job node.Job
				if err := cl.Get(ctx, "jobs/"+args[0], &job); err != nil {
					return err
				}
				return sto.print(g.stdout, job, func() { printJob(g, job, 0) })
			})
		},
	}
	sto.register(status)

	cancel := &cobra.Command{
		Use:   "cancel ID",
		Short: "Cancel a job: every member's GPUs are released",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			return withClient(c, g, func(ctx context.Context, cl *node.Client) error {
				var job node.Job
				if err := cl.Post(ctx, "jobs/"+args[0]+"/cancel", nil, &job); err != nil {
					return err
				}
				fmt.Fprintf(g.stdout, "job %s %s\n", job.ID, job.State)
				return nil
			})
		},
	}
	c.AddCommand(submit, ls, status, cancel)
	return c
}

func printJob(g *globals, j node.Job, took time.Duration) {
	w := g.stdout
	fmt.Fprintf(w, "job %s (%s): %s", j.ID, j.Spec.Name, j.State)
	if took > 0 {
		fmt.Fprintf(w, " in %s", took.Round(time.Millisecond))
	}
	fmt.Fprintln(w)
	if j.Reason != "" {
		fmt.Fprintf(w, "reason: %s\n", j.Reason)
	}
	if len(j.Members) == 0 {
		return
	}
	u, err := gossip.ParseUnit(j.Unit)
	if err != nil {
		u = gossip.DefaultUnit
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "RANK\tPROVIDER\tGPUS\tCLASS\tZONE\tPRICE/GPU-H")
	for i, m := range j.Members {
		zone := m.Zone
		if zone == "" {
			zone = "-"
		}
		fmt.Fprintf(tw, "%d\t%s\t%d\t%s\t%s\t%s\n", i, m.Provider, m.GPUs, m.Class, zone, u.Format(m.Price))
	}
	tw.Flush()
	fmt.Fprintf(w, "cluster: %s, %s %s per hour\n", plural(len(j.Members), "member"), u.Format(j.Cost), u.Token)
}
