package cli

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/gpumesh/gpumesh/exec"
	"github.com/gpumesh/gpumesh/exec/receipt"
	"github.com/gpumesh/gpumesh/gossip"
	"github.com/gpumesh/gpumesh/internal/text"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/jobspec"
	"github.com/spf13/cobra"
)

func jobCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "job", Short: "Submit jobs and follow them: a cluster is negotiated from any peer"}

	var so output
	var wait, follow bool
	var queue string
	submit := &cobra.Command{
		Use:   "submit FILE",
		Short: "Submit a job spec (YAML or JSON) and negotiate a GPU cluster for it",
		Args:  cobra.ExactArgs(1),
		Example: `  gpumesh job submit job.yaml --wait
  gpumesh job submit job.yaml -f        # and stream the logs
  gpumesh job submit job.yaml --queue 30m   # wait up to 30 minutes for a cluster`,
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
			spec, err := jobspec.Parse(data, format)
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			if c.Flags().Changed("queue") {
				spec.Queue = queue
			}
			return withClient(c, g, func(ctx context.Context, cl *node.Client) error {
				if err := addInputs(ctx, g, cl, &spec, filepath.Dir(args[0])); err != nil {
					return err
				}
				if err := addImage(ctx, g, cl, &spec); err != nil {
					return err
				}
				job, err := cl.SubmitJob(ctx, spec)
				if err != nil {
					return err
				}
				if !wait && !follow {
					return so.print(g.stdout, job, func() {
						queued := ""
						if job.Spec.Queue != "" {
							queued = fmt.Sprintf(", waiting up to %s for one if none can form now", job.Spec.Queue)
						}
						fmt.Fprintf(g.stdout, "job %s submitted: negotiating a cluster of %d GPUs%s (follow it with `gpumesh job status %s`)\n",
							job.ID, job.Spec.Resources.GPUs, queued, job.ID)
					})
				}
				return waitJob(ctx, g, cl, so, job, follow)
			})
		},
	}
	submit.Flags().BoolVar(&wait, "wait", false, "wait until the job ends, showing its progress; exit with the job's exit code")
	submit.Flags().BoolVarP(&follow, "follow", "f", false, "like --wait, streaming every member's logs")
	submit.Flags().StringVar(&queue, "queue", "", "when no cluster can form, wait up to this long (e.g. 30m; the spec's queue:) for offers to change, negotiating again as they do")
	so.register(submit)

	ls := jobLsCmd(g)

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
				job, err := cl.Job(ctx, args[0])
				if err != nil {
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
				job, err := cl.CancelJob(ctx, args[0])
				if err != nil {
					return err
				}
				fmt.Fprintf(g.stdout, "job %s %s\n", job.ID, job.State)
				return nil
			})
		},
	}
	var followLogs bool
	logs := &cobra.Command{
		Use:   "logs ID",
		Short: "Show a job's logs: every member's output, each line prefixed by its rank",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			return withClient(c, g, func(ctx context.Context, cl *node.Client) error {
				return streamLogs(ctx, g, cl, args[0], followLogs)
			})
		},
	}
	logs.Flags().BoolVarP(&followLogs, "follow", "f", false, "keep streaming until the job ends")

	var outDir string
	var checkpoint bool
	get := &cobra.Command{
		Use:   "get ID",
		Short: "Copy a job's outputs into a folder, checking each file's SHA-256",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if outDir == "" {
				return usageError{fmt.Errorf("say where the outputs go: -o DIR")}
			}
			return withClient(c, g, func(ctx context.Context, cl *node.Client) error {
				if checkpoint {
					return getCheckpoint(ctx, g, cl, args[0], outDir)
				}
				return getOutputs(ctx, g, cl, args[0], outDir)
			})
		},
	}
	get.Flags().StringVarP(&outDir, "output", "o", "", "folder to write the outputs into (made if missing), one subfolder per member: rank-0, rank-1, ...")
	get.Flags().BoolVar(&checkpoint, "checkpoint", false, "write the job's latest checkpoint into the -o folder (which must not exist or be empty) instead of its outputs")

	var ro output
	receipts := &cobra.Command{
		Use:   "receipts [ID]",
		Short: "Show the signed receipts of a job's work (all jobs without ID)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			if err := ro.check(); err != nil {
				return err
			}
			job := ""
			if len(args) == 1 {
				job = args[0]
			}
			return withClient(c, g, func(ctx context.Context, cl *node.Client) error {
				rs, err := cl.Receipts(ctx, job)
				if err != nil {
					return err
				}
				return ro.print(g.stdout, rs, func() { printReceipts(g, rs) })
			})
		},
	}
	ro.register(receipts)
	c.AddCommand(submit, ls, status, cancel, logs, get, receipts, jobExecCmd(g), jobPortForwardCmd(g))
	return c
}

func printJob(g *globals, j node.Job, took time.Duration) {
	w := g.stdout
	fmt.Fprintf(w, "job %s (%s): %s", j.ID, j.Spec.Name, j.State)
	if took > 0 {
		fmt.Fprintf(w, " in %s", took.Round(time.Millisecond))
	}
	fmt.Fprintln(w)
	if j.State == node.JobQueued {
		fmt.Fprintf(w, "queued: %s\n", queuedLine(j))
	}
	if j.Reason != "" {
		fmt.Fprintf(w, "reason: %s\n", text.Line(j.Reason))
	}
	if len(j.Members) == 0 {
		return
	}
	u, err := gossip.ParseUnit(j.Unit)
	if err != nil {
		u = gossip.DefaultUnit
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	runs := len(j.Runs) == len(j.Members)
	head := "RANK\tPROVIDER\tGPUS\tCLASS\tZONE\tPRICE/GPU-H"
	if runs {
		head += "\tSTATE\tEXIT\tOUTPUTS\tRECEIPT"
	}
	fmt.Fprintln(tw, head)
	for i, m := range j.Members {
		zone := text.Line(m.Zone)
		if zone == "" {
			zone = "-"
		}
		fmt.Fprintf(tw, "%d\t%s\t%d\t%s\t%s\t%s", i, m.Provider, m.GPUs, text.Line(m.Class), zone, u.Format(m.Price))
		if runs {
			r := j.Runs[i]
			exit, receipt := "-", r.Receipt
			if r.State == node.MemberExited {
				exit = fmt.Sprint(r.ExitCode)
			}
			if receipt == "" {
				receipt = "-"
			}
			fmt.Fprintf(tw, "\t%s\t%s\t%d\t%s", r.State, exit, len(r.Outputs), text.Line(receipt))
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
	fmt.Fprintf(w, "cluster: %s, %s %s per hour\n", plural(len(j.Members), "member"), u.Format(j.Cost), u.Token)
	printImages(w, j)
	for _, r := range j.Runs {
		if r.Network == node.NetworkHost {
			why := "a provider of the job cannot make job networks"
			if r.Rank < len(j.Members) && j.Members[r.Rank].HostNet {
				why = "its provider cannot make job networks"
			}
			fmt.Fprintf(w, "member %d: host network (%s)\n", r.Rank, why)
			continue
		}
		if r.Addr == "" {
			continue
		}
		fmt.Fprintf(w, "member %d: job address %s", r.Rank, text.Line(r.Addr))
		if r.Net != nil {
			fmt.Fprintf(w, ", sent %s, received %s on the job network", exec.FormatSize(r.Net.SentBytes), exec.FormatSize(r.Net.ReceivedBytes))
			if r.Net.Dropped > 0 {
				fmt.Fprintf(w, " (%d packets dropped)", r.Net.Dropped)
			}
			if r.Net.Direct+r.Net.Relayed > 0 {
				fmt.Fprintf(w, "; its provider reached %d other providers directly, %d through a relay", r.Net.Direct, r.Net.Relayed)
			}
		}
		fmt.Fprintln(w)
	}
	for _, r := range j.Runs {
		if r.Error != "" {
			fmt.Fprintf(w, "member %d: %s\n", r.Rank, text.Line(r.Error))
		}
	}
	if j.ExitCode != nil {
		fmt.Fprintf(w, "exit code: %d\n", *j.ExitCode)
	}
}

// waitJob follows a submitted job to its end, showing each step (and the
// logs, with follow), and ends with the job's exit code.
func waitJob(ctx context.Context, g *globals, cl *node.Client, so output, job node.Job, follow bool) error {
	human := so.format == "text"
	if human {
		fmt.Fprintf(g.stdout, "job %s submitted; finding and negotiating %d GPUs...\n", job.ID, job.Spec.Resources.GPUs)
	}
	start := time.Now()
	logsDone := make(chan error, 1)
	if follow {
		go func() { logsDone <- streamLogs(ctx, g, cl, job.ID, true) }()
	} else {
		logsDone <- nil
	}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	last, running, lastWhy := node.JobState(""), -1, ""
	for {
		if human && job.State == node.JobQueued && job.Reason != lastWhy {
			fmt.Fprintf(g.stdout, "queued (%s): %s\n", queuedLine(job), text.Line(job.Reason))
			lastWhy = job.Reason
		}
		if human && job.State != last {
			switch job.State {
			case node.JobFormed, node.JobRunning:
				if last == node.JobNegotiating || last == node.JobQueued || last == "" {
					printJob(g, job, time.Since(start))
				}
			}
			last = job.State
		}
		if human && job.State == node.JobRunning && !follow {
			up := 0
			for _, r := range job.Runs {
				if r.State != node.MemberStarting {
					up++
				}
			}
			if up != running {
				fmt.Fprintf(g.stdout, "running: %d of %d members started\n", up, len(job.Runs))
				running = up
			}
		}
		if job.State == node.JobDone || job.State == node.JobFailed || job.State == node.JobCancelled {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
		var err error
		if job, err = cl.Job(ctx, job.ID); err != nil {
			return err
		}
	}
	if err := <-logsDone; err != nil {
		fmt.Fprintf(g.stderr, "gpumesh: logs: %v\n", err)
	}
	if err := so.print(g.stdout, job, func() { printJob(g, job, time.Since(start)) }); err != nil {
		return err
	}
	code := 1
	if job.ExitCode != nil {
		code = *job.ExitCode
	}
	if job.State == node.JobDone && code == 0 {
		return nil
	}
	if code == 0 {
		code = 1
	}
	return jobExit{code: code, reason: fmt.Sprintf("job %s %s: %s", job.ID, job.State, text.Line(job.Reason))}
}

// streamLogs copies a job's logs to stdout, each line made safe for a
// terminal (the node does so as it writes them; this keeps a terminal safe
// from a node that did not).
func streamLogs(ctx context.Context, g *globals, cl *node.Client, id string, follow bool) error {
	body, err := cl.JobLogs(ctx, id, follow)
	if err != nil {
		return err
	}
	defer body.Close()
	br := bufio.NewReaderSize(body, 128<<10)
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			end := bytes.HasSuffix(line, []byte("\n"))
			out := text.LogLine(bytes.TrimSuffix(line, []byte("\n")))
			if end {
				out = append(out, '\n')
			}
			if _, werr := g.stdout.Write(out); werr != nil {
				return werr
			}
		}
		switch {
		case err == nil, errors.Is(err, bufio.ErrBufferFull):
		case errors.Is(err, io.EOF):
			return nil
		default:
			return err
		}
	}
}

// getOutputs copies every member's outputs into dir/rank-N, checking each
// file's SHA-256 against the one its member reported.
func getOutputs(ctx context.Context, g *globals, cl *node.Client, id, dir string) error {
	job, err := cl.Job(ctx, id)
	if err != nil {
		return err
	}
	files, bytes := 0, int64(0)
	for _, r := range job.Runs {
		for _, o := range r.Outputs {
			dst := filepath.Join(dir, fmt.Sprintf("rank-%d", r.Rank), filepath.FromSlash(o.Path))
			if err := fetchOutput(ctx, cl, id, r.Rank, dst, o); err != nil {
				return err
			}
			files++
			bytes += o.Size
		}
	}
	if files == 0 {
		if job.State != node.JobDone && job.State != node.JobFailed {
			return fmt.Errorf("job %s is %s: it has no outputs yet", id, job.State)
		}
		fmt.Fprintf(g.stdout, "job %s left no outputs\n", id)
		return nil
	}
	fmt.Fprintf(g.stdout, "%s (%d bytes) of job %s in %s, SHA-256 checked\n", plural(files, "file"), bytes, id, dir)
	return nil
}

func fetchOutput(ctx context.Context, cl *node.Client, id string, rank int, dst string, want receipt.OutputFile) error {
	body, err := cl.JobOutput(ctx, id, rank, want.Path)
	if err != nil {
		return err
	}
	defer body.Close()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(dst), ".gpumesh-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), body)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("output %s: %w", want.Path, err)
	}
	if sum := hex.EncodeToString(h.Sum(nil)); n != want.Size || sum != want.SHA256 {
		return fmt.Errorf("output %s: got %d bytes with SHA-256 %s, want %d bytes with %s; run `gpumesh job get` again", want.Path, n, sum, want.Size, want.SHA256)
	}
	return os.Rename(f.Name(), dst)
}

func printReceipts(g *globals, rs []receipt.Signed) {
	if len(rs) == 0 {
		fmt.Fprintln(g.stdout, "no receipts yet: a member's provider signs one when its work ends")
		return
	}
	tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "JOB\tRANK\tGPUS\tCLASS\tGPU-SECONDS\tCHECKPOINTS\tAMOUNT\tEXIT\tSIGNED BY")
	for _, s := range rs {
		r := s.Receipt
		u, err := gossip.ParseUnit(r.Unit)
		if err != nil {
			u = gossip.DefaultUnit
		}
		signed := "provider"
		switch {
		case len(s.ConsumerSig) > 0:
			signed = "provider, consumer"
		case s.Unsigned != nil:
			signed = "provider; not countersigned: " + s.Unsigned.Reason
		}
		ckpt := "-" // checkpoint bytes its provider sent the consumer, as the consumer counted them
		if r.CheckpointBytes > 0 {
			ckpt = exec.FormatSize(int64(r.CheckpointBytes))
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%.3f\t%s\t%s %s\t%d\t%s\n", text.Line(r.Job), r.Rank, r.GPUs, text.Line(r.Class), r.GPUSeconds(), ckpt, u.Format(r.Amount), u.Token, r.ExitCode, signed)
	}
	tw.Flush()
}

func jobLsCmd(g *globals) *cobra.Command {
	var o output
	var q node.JobsQuery
	var all bool
	c := &cobra.Command{
		Use:   "ls",
		Short: "List the jobs submitted from this peer, newest first, a page at a time",
		Long: fmt.Sprintf(`List the jobs submitted from this peer, newest first: the newest %d, or
--limit of them (up to %d). When there are more, the list ends with the
command that shows the next page (--before CURSOR); --all shows them all.
With -o json the answer is {"jobs": [...], "next": CURSOR}, next "" on the
last page.`, node.DefaultJobsPage, node.MaxJobsPage),
		Example: `  gpumesh job ls
  gpumesh job ls --limit 10 --before CURSOR
  gpumesh job ls --all -o json`,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := o.check(); err != nil {
				return err
			}
			if q.Limit < 0 || q.Limit > node.MaxJobsPage {
				return usageError{fmt.Errorf("--limit %d: want 1 to %d jobs a page", q.Limit, node.MaxJobsPage)}
			}
			return withClient(c, g, func(ctx context.Context, cl *node.Client) error {
				page, err := listJobs(ctx, cl, q, all)
				if err != nil {
					return err
				}
				return o.print(g.stdout, page, func() { printJobs(g, page, q) })
			})
		},
	}
	f := c.Flags()
	f.IntVar(&q.Limit, "limit", 0, fmt.Sprintf("jobs a page, 1 to %d (default %d)", node.MaxJobsPage, node.DefaultJobsPage))
	f.StringVar(&q.Before, "before", "", "start after this cursor: the one the page before ended with")
	f.BoolVar(&all, "all", false, "every job (from --before on), page after page")
	o.register(c)
	return c
}

// listJobs is one page of jobs, or with all every page from q.Before on
// in one.
func listJobs(ctx context.Context, cl *node.Client, q node.JobsQuery, all bool) (node.JobsPage, error) {
	if !all {
		return cl.Jobs(ctx, q)
	}
	if q.Limit == 0 {
		q.Limit = node.MaxJobsPage // fewer calls
	}
	out := node.JobsPage{Jobs: []node.Job{}}
	for {
		page, err := cl.Jobs(ctx, q)
		if err != nil {
			return node.JobsPage{}, err
		}
		out.Jobs = append(out.Jobs, page.Jobs...)
		if page.Next == "" {
			return out, nil
		}
		q.Before = page.Next
	}
}

func printJobs(g *globals, page node.JobsPage, q node.JobsQuery) {
	if len(page.Jobs) == 0 {
		if q.Before == "" {
			fmt.Fprintln(g.stdout, "no jobs yet: submit one with `gpumesh job submit job.yaml`")
		} else {
			fmt.Fprintln(g.stdout, "no more jobs")
		}
		return
	}
	tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tSTATE\tGPUS\tMEMBERS\tCREATED")
	for _, j := range page.Jobs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\n", j.ID, j.Spec.Name, j.State, j.Spec.Resources.GPUs, len(j.Members), j.Created.Local().Format(time.DateTime))
	}
	tw.Flush()
	for _, j := range page.Jobs {
		if j.State == node.JobQueued {
			fmt.Fprintf(g.stdout, "%s queued (%s): %s\n", j.ID, queuedLine(j), text.Line(j.Reason))
		}
	}
	if page.Next != "" {
		more := "gpumesh job ls --before " + page.Next
		if q.Limit != 0 {
			more += fmt.Sprintf(" --limit %d", q.Limit)
		}
		fmt.Fprintf(g.stdout, "%s shown; for more: %s (or --all for every job)\n", plural(len(page.Jobs), "job"), more)
	}
}

// queuedLine says how long a queued job may still wait and how often it
// has tried again.
func queuedLine(j node.Job) string {
	left := time.Until(j.QueuedUntil).Round(time.Second)
	s := fmt.Sprintf("%s left of its queue %s", max(left, 0), text.Line(j.Spec.Queue))
	if j.QueuePosition > 0 {
		s = fmt.Sprintf("position %d in this peer's queue, ", j.QueuePosition) + s
	}
	switch {
	case j.Tries == 1:
		s += ", tried again once"
	case j.Tries > 1:
		s += fmt.Sprintf(", tried again %d times", j.Tries)
	}
	return s
}
