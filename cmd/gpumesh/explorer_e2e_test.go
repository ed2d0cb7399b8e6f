package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	cdplog "github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/gpumesh/gpumesh/internal/testwait"
	"github.com/gpumesh/gpumesh/node"
)

// chromium is Debian's package `chromium`, what .ci/run installs.
const chromium = "/usr/bin/chromium"

// browserWait bounds each wait on the page: the directory is searched at
// once when a page opens, the price chart gets a point every 5 s.
const browserWait = 30 * time.Second

// newBrowser starts headless Chromium on a fresh profile, with everything
// that would reach beyond this machine turned off, and returns its tab. The
// browser is stopped when the test ends. problems returns every console
// error, uncaught exception and error the browser logged (a failed request,
// a blocked resource) so far.
func newBrowser(t *testing.T) (ctx context.Context, problems func() []string) {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium),
		chromedp.Headless,
		chromedp.NoSandbox, // CI runs as root
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-domain-reliability", true),
		chromedp.Flag("no-pings", true),
		chromedp.WindowSize(1280, 900),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	var mu sync.Mutex
	var found []string
	note := func(s string) {
		mu.Lock()
		found = append(found, s)
		mu.Unlock()
	}
	// The listener is on the tab from its first command, so it sees
	// everything the page does. It runs in the tab's loop: it only notes.
	ctx, cancel := chromedp.NewContext(actx, chromedp.WithErrorf(t.Logf), chromedp.WithListener(func(ev any) {
		switch ev := ev.(type) {
		case *runtime.EventConsoleAPICalled:
			if ev.Type == runtime.ConsoleAPICalledTypeError {
				var args []string
				for _, a := range ev.Args {
					args = append(args, strings.TrimSpace(string(a.Value)+" "+a.Description))
				}
				note("console.error: " + strings.Join(args, " "))
			}
		case *runtime.EventExceptionThrown:
			d := ev.ExceptionDetails
			msg := d.Text
			if d.Exception != nil {
				msg += " " + d.Exception.Description
			}
			note(fmt.Sprintf("exception at %s:%d: %s", d.URL, d.LineNumber+1, msg))
		case *cdplog.EventEntryAdded:
			if ev.Entry.Level == cdplog.EntryLevelError {
				note(fmt.Sprintf("browser log (%s): %s %s", ev.Entry.Source, ev.Entry.Text, ev.Entry.URL))
			}
		}
	}))
	t.Cleanup(func() {
		// Closes the tab and the browser, then waits for its process to exit.
		if err := chromedp.Cancel(ctx); err != nil {
			t.Logf("close chromium: %v", err)
		}
		cancel()
		cancelAlloc()
	})
	if err := chromedp.Do(ctx); err != nil { // starts the browser, with no timeout
		t.Fatalf("start %s: %v", chromium, err)
	}
	return ctx, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), found...)
	}
}

// needChromium skips the test where Chromium is missing, unless in CI ($CI
// set), where the test fails instead.
func needChromium(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(chromium); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI: %s is missing (%v): .ci/run installs Debian's chromium package; the explorer's browser test needs it", chromium, err)
		}
		t.Skipf("%s is missing: `apt-get install chromium` to run the explorer in a browser (with $CI set, this test fails instead)", chromium)
	}
}

// explorerURL waits for a node's "explorer on http://…/" line.
func explorerURL(t *testing.T, n *gmNode) string {
	t.Helper()
	re := regexp.MustCompile(`explorer on (http://127\.0\.0\.1:\d+/)`)
	var url string
	testwait.For(t, startWait, n.name+" to say where its explorer is", func() (bool, string) {
		if m := re.FindStringSubmatch(n.out.String()); m != nil {
			url = m[1]
			return true, ""
		}
		return false, "no 'explorer on' line in its output"
	})
	return url
}

// screenshot saves the whole page as PNG into dir and, when
// $GPUMESH_SCREENSHOTS names a folder, there too (to look at after the test).
func screenshot(t *testing.T, ctx context.Context, dir, name string) {
	t.Helper()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot %s: %v", name, err)
	}
	dirs := []string{dir}
	if keep := os.Getenv("GPUMESH_SCREENSHOTS"); keep != "" {
		dirs = append(dirs, keep)
	}
	for _, d := range dirs {
		if err := os.WriteFile(filepath.Join(d, name), png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("screenshot %s: %d bytes", name, len(png))
}

func TestExplorerInBrowserEndToEnd(t *testing.T) {
	needChromium(t)
	// The swarm: a provider of 8 mock H100s running processes, and a peer
	// without GPUs that serves the explorer on a free port.
	common := append([]string{"--nat=false", "--dht-mode", "server", "--heartbeat", "500ms"}, privateSwarm(t)...)
	_, jobFlags := jobDir(t)
	prov := startNode(t, "provider", dataDir(t), append(append(slices.Clone(common), jobFlags...), "--gpus", "mock:dgxh100", "--price", "fixed:2.10", "--executors", "process")...)
	sub := startNode(t, "submitter", dataDir(t), append(common, "--bootstrap", prov.bootstrapAddr(t), "--explorer", "127.0.0.1:0")...)
	url := explorerURL(t, sub)
	testwait.For(t, meshWait, "the provider in the submitter's directory", func() (bool, string) {
		res, err := findGPUs(sub.data, "--model", "H100")
		if err != nil {
			return false, err.Error()
		}
		return res.Providers == 1, fmt.Sprintf("%d providers", res.Providers)
	})

	// Started after the nodes: its cleanup (closing the browser) runs
	// before theirs, so the page never sees its peer go.
	ctx, problems := newBrowser(t)
	shots := t.TempDir()
	wait := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		wctx, cancel := context.WithTimeout(ctx, browserWait)
		defer cancel()
		if err := chromedp.Do(wctx, steps...); err != nil {
			body, _ := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("main")))
			t.Fatalf("the page: %s: %v\nproblems: %v\npage text:\n%s", what, err, problems(), body)
		}
	}
	text := func(sel string) string {
		t.Helper()
		v, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
		if err != nil {
			t.Fatalf("text of %s: %v", sel, err)
		}
		return v
	}

	start := time.Now()
	wait("loads and goes live",
		chromedp.EmulateViewport(1280, 900),
		chromedp.Navigate(url),
		chromedp.WaitVisible(chromedp.CSS(`#conn[data-live="true"]`)),
	)
	if got := text("#peer-kv"); !strings.Contains(got, sub.id.PeerID) || !strings.Contains(got, sub.id.SolanaAddress) {
		t.Errorf("the peer section shows %q, want the submitter's peer ID and Solana address", got)
	}
	wait("lists the provider among the peers",
		chromedp.WaitVisible(chromedp.CSS(`#peers-body tr[data-peer="`+prov.id.PeerID+`"]`)))
	wait("lists the H100-80GB class", chromedp.WaitVisible(chromedp.CSS(`#gpus-body tr[data-class="H100-80GB"]`)))
	if got := text(`#gpus-body tr[data-class="H100-80GB"]`); !strings.Contains(got, "H100-80GB") || !strings.Contains(got, "2.10 USDC/GPU-h") {
		t.Errorf("the H100-80GB row says %q, want its cheapest ask 2.10 USDC/GPU-h", got)
	}
	t.Logf("page live with the provider and its GPUs in %v", time.Since(start).Round(time.Millisecond))

	// A job submitted through the CLI shows up and reaches done.
	spec := filepath.Join(t.TempDir(), "job.yaml")
	if err := os.WriteFile(spec, []byte(`name: explorer-e2e
command: [sh, -c, "echo hi"]
resources:
  gpus: 1
  gpu: {model: H100}
maxPrice: 2.50
timeout: 1m
`), 0o600); err != nil {
		t.Fatal(err)
	}
	var j node.Job
	if err := gmJSON(sub.data, &j, "job", "submit", spec); err != nil {
		t.Fatal(err)
	}
	submitted := time.Now()
	job := `#jobs-list article[data-job="` + j.ID + `"]`
	wait("shows the job done",
		chromedp.WaitVisible(chromedp.CSS(job+`[data-state="done"]`)),
		chromedp.WaitVisible(chromedp.CSS(job+` tr[data-state="exited"]`)),
	)
	t.Logf("job done on the page %v after submit", time.Since(submitted).Round(time.Millisecond))
	jobText := text(job)
	for _, want := range []string{"explorer-e2e", "done", "exit code 0", "countersigned", "H100-80GB"} {
		if !strings.Contains(jobText, want) {
			t.Errorf("the job's card lacks %q:\n%s", want, jobText)
		}
	}
	wait("shows the job's receipt",
		chromedp.WaitVisible(chromedp.CSS(`#receipts-body tr[data-receipt="`+j.ID+`-0-0"]`)))
	// The provider's score after one finished run: (4 + 1) / (5 + 1).
	prow := `#providers-body tr[data-provider="` + prov.id.PeerID + `"]`
	wait("shows the provider's score", chromedp.WaitVisible(chromedp.CSS(prow)))
	if got := text(prow); !strings.Contains(got, "0.833") {
		t.Errorf("the provider's row shows %q, want its score 0.833", got)
	}
	forwardAndQueueOnThePage(t, sub, wait, text)

	for _, bad := range []string{"[object", "undefined", "NaN"} {
		if page := text("main"); strings.Contains(page, bad) {
			t.Errorf("the page shows %q:\n%s", bad, page)
		}
	}

	// The price chart: a point every 5 s, the provider's ask heard from
	// the directory.
	wait("draws the price chart", chromedp.WaitVisible(chromedp.CSS(`#chart svg path`)))
	screenshot(t, ctx, shots, "explorer-1280.png")

	// A phone's width: the chart is drawn again to fit, and nothing is
	// wider than the screen.
	wait("fits 375 px",
		chromedp.EmulateViewport(375, 812, chromedp.EmulateMobile),
		func(ctx context.Context, tg *chromedp.Target) (chromedp.Void, error) {
			_, err := chromedp.Poll[bool](`document.querySelector('#chart svg').viewBox.baseVal.width <= window.innerWidth`,
				chromedp.WithPollingTimeout(browserWait))(ctx, tg)
			return chromedp.Void{}, err
		},
	)
	if wide, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`document.documentElement.scrollWidth > window.innerWidth`)); err != nil || wide {
		t.Errorf("the page is wider than 375 px (%v)", err)
	}
	screenshot(t, ctx, shots, "explorer-375.png")

	if p := problems(); len(p) > 0 {
		t.Errorf("the browser reported %d problems:\n%s", len(p), strings.Join(p, "\n"))
	}
}

// forwardAndQueueOnThePage runs a server job with `gpumesh job port-forward`
// into it and a job that must queue (16 GPUs of a swarm's 8), and checks
// the page: the forward (where it listens, the member's port, its
// connections and bytes) on the running job's card, the queued job's
// position in the queue on its own.
func forwardAndQueueOnThePage(t *testing.T, sub *gmNode, wait func(string, ...chromedp.Action[chromedp.Void]), text func(string) string) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	spec := filepath.Join(t.TempDir(), "server.yaml")
	if err := os.WriteFile(spec, []byte(fmt.Sprintf(`name: explorer-server
command: [sh, -c, "mkdir -p www && echo served > www/index.html && exec busybox httpd -f -p 127.0.0.1:%d -h www"]
resources:
  gpus: 1
  gpu: {model: H100}
maxPrice: 2.50
timeout: 5m
`, port)), 0o600); err != nil {
		t.Fatal(err)
	}
	var j node.Job
	if err := gmJSON(sub.data, &j, "job", "submit", spec); err != nil {
		t.Fatal(err)
	}
	defer func() { _, _ = gm(sub.data, "job", "cancel", j.ID) }()
	card := `#jobs-list article[data-job="` + j.ID + `"]`
	wait("shows the server job running", chromedp.WaitVisible(chromedp.CSS(card+`[data-state="running"]`)))

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pf := exec.CommandContext(ctx, gmBin, "--data", sub.data, "job", "port-forward", j.ID, fmt.Sprintf("0:%d", port))
	out, err := pf.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := pf.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = pf.Process.Kill(); _ = pf.Wait() }()
	lines := bufio.NewScanner(out)
	if !lines.Scan() {
		t.Fatal("port-forward printed nothing")
	}
	addr, _, _ := strings.Cut(strings.TrimPrefix(lines.Text(), "forwarding "), " ")
	testwait.Until(t, ctx, "the server answering through the forward", func() (bool, string) {
		body, err := get(ctx, "http://"+addr+"/index.html")
		return err == nil && body == "served\n", fmt.Sprintf("%q, %v", body, err)
	})
	fwd := fmt.Sprintf(`%s .forwards li[data-port="%d"]`, card, port)
	wait("shows the forward", chromedp.WaitVisible(chromedp.CSS(fwd)))
	testwait.Until(t, ctx, "the forward's connections on the page", func() (bool, string) {
		got := text(fwd)
		return strings.Contains(got, addr) && strings.Contains(got, "0 open") && !strings.Contains(got, ", 0 in all"), got
	})

	queued := filepath.Join(t.TempDir(), "queued.yaml")
	if err := os.WriteFile(queued, []byte(`name: explorer-queued
command: [sh, -c, "echo never"]
resources:
  gpus: 16
  gpu: {model: H100}
maxPrice: 2.50
timeout: 5m
queue: 10m
`), 0o600); err != nil {
		t.Fatal(err)
	}
	var q node.Job
	if err := gmJSON(sub.data, &q, "job", "submit", queued); err != nil {
		t.Fatal(err)
	}
	defer func() { _, _ = gm(sub.data, "job", "cancel", q.ID) }()
	qcard := `#jobs-list article[data-job="` + q.ID + `"]`
	wait("shows the queued job's place", chromedp.WaitVisible(chromedp.CSS(qcard+`[data-state="queued"] .queue-position`)))
	if got := text(qcard + " .queue-position"); got != "position 1 in this peer's queue" {
		t.Errorf("the queued job's place reads %q", got)
	}
	ls, err := gm(sub.data, "job", "ls")
	if err != nil || !strings.Contains(string(ls), q.ID+" queued (position 1 in this peer's queue") {
		t.Errorf("job ls: %v\n%s\nwant the queued job's position", err, ls)
	}

	// The forward stops with its job, and leaves the page.
	if _, err := gm(sub.data, "job", "cancel", j.ID); err != nil {
		t.Fatal(err)
	}
	wait("drops the ended forward", chromedp.WaitNotPresent(chromedp.CSS(fwd)))
}
