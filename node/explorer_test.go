package node_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/dht"
	"github.com/gpumesh/gpumesh/internal/testwait"
	"github.com/gpumesh/gpumesh/node"
	"github.com/gpumesh/gpumesh/node/meshtest"
)

// explorerMesh starts a provider of 8 mock H100s (process executor) and a
// peer with a data dir, the local API on TCP (so it has a token) and the
// explorer on a free loopback port; it waits until that peer finds the
// provider in the directory.
func explorerMesh(t *testing.T) (m *meshtest.Mesh, provider, viewer *node.Node, dataDir string) {
	t.Helper()
	dataDir = t.TempDir()
	o := h100s(21, 1)
	o.Config = func(i int, c *node.Config) {
		if i == 1 {
			c.DataDir, c.APIListen, c.Explorer = dataDir, "127.0.0.1:0", "127.0.0.1:0"
		}
	}
	m = meshtest.Start(t, 2, o)
	provider, viewer = m.Nodes[0], m.Nodes[1]
	testwait.For(t, time.Minute, "the viewer to find the provider", func() (bool, string) {
		res, err := viewer.FindGPUs(t.Context(), dht.Query{Model: "H100"})
		return err == nil && res.Providers == 1, fmt.Sprintf("%d providers, %v", res.Providers, err)
	})
	return m, provider, viewer, dataDir
}

// explorerGet GETs a URL and reads its body whole.
func explorerGet(t *testing.T, url string) *http.Response {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		t.Fatal(err)
	}
	return resp
}

func TestExplorerStateAndPage(t *testing.T) {
	_, provider, viewer, dataDir := explorerMesh(t)
	base := "http://" + viewer.ExplorerAddr()
	if viewer.ExplorerAddr() == "" || provider.ExplorerAddr() != "" {
		t.Fatalf("explorer addresses: viewer %q, provider %q", viewer.ExplorerAddr(), provider.ExplorerAddr())
	}

	var st node.ExplorerState
	resp, err := http.Get(base + "/explorer/state")
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("GET /explorer/state: %v %s %q", err, resp.Status, resp.Header.Get("Content-Type"))
	}
	if err := json.Unmarshal(raw, &st); err != nil {
		t.Fatal(err)
	}
	if st.Peer.PeerID != viewer.Identity().PeerID.String() || st.Peer.SolanaAddress != viewer.Identity().SolanaAddress || st.Peer.Swarm != meshtest.SwarmOf(21).ID() {
		t.Fatalf("peer %+v", st.Peer)
	}
	if len(st.Peers) != 1 || st.Peers[0].PeerID != provider.Identity().PeerID.String() {
		t.Fatalf("peers %+v, want the provider", st.Peers)
	}
	// The first request waited for the first directory search.
	if len(st.Directory.Classes) != 1 {
		t.Fatalf("directory %+v, want one class", st.Directory)
	}
	c := st.Directory.Classes[0]
	if c.Class != "H100-80GB" || c.Providers != 1 || c.Total != 8 || c.Available != 8 || c.Cheapest != 2_100_000 || c.Free != nil {
		t.Fatalf("class %+v", c)
	}
	// The provider of the search, with the score of a provider this peer
	// has no evidence of, and how it was computed.
	if len(st.Providers) != 1 || st.Providers[0].Peer != provider.Identity().PeerID.String() || !st.Providers[0].Offers ||
		st.Providers[0].Score.Score != 0.8 || !strings.HasSuffix(st.Providers[0].Score.Formula, "= 0.800") {
		t.Fatalf("providers %+v, want the provider at the prior 0.8 with its formula", st.Providers)
	}
	if st.Prices.Token != "USDC" || st.Jobs == nil || st.Receipts == nil || st.Anchoring != nil {
		t.Fatalf("prices %+v, jobs %v, receipts %v, anchoring %v", st.Prices, st.Jobs, st.Receipts, st.Anchoring)
	}
	// Nothing secret: not the API token, not the data dir.
	token, err := os.ReadFile(filepath.Join(dataDir, "api.token"))
	if err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{strings.TrimSpace(string(token)), dataDir} {
		if strings.Contains(string(raw), secret) {
			t.Fatalf("the explorer's state shows %q", secret)
		}
	}

	// The page and its assets, embedded; read-only.
	for path, ctype := range map[string]string{
		"/":            "text/html; charset=utf-8",
		"/app.js":      "text/javascript; charset=utf-8",
		"/style.css":   "text/css; charset=utf-8",
		"/favicon.svg": "image/svg+xml",
		"/favicon.ico": "image/svg+xml",
	} {
		resp := explorerGet(t, base+path)
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != ctype {
			t.Errorf("GET %s: %s %q, want 200 %q", path, resp.Status, resp.Header.Get("Content-Type"), ctype)
		}
	}
	if resp := explorerGet(t, base+"/nope"); resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /nope: %s", resp.Status)
	}
	for _, method := range []string{http.MethodPost, http.MethodPut, http.MethodDelete} {
		req, _ := http.NewRequest(method, base+"/explorer/state", strings.NewReader("{}"))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("%s /explorer/state: %s, want 405", method, resp.Status)
		}
	}

	// Bound to loopback, it answers no other site's name (DNS rebinding).
	for host, want := range map[string]int{"evil.example:80": http.StatusMisdirectedRequest, "localhost": http.StatusOK, "[::1]:9": http.StatusOK} {
		req, _ := http.NewRequest(http.MethodGet, base+"/explorer/state", nil)
		req.Host = host
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("Host %s: %s, want %d", host, resp.Status, want)
		}
	}

	// A second peer on the same address is refused with what to do.
	other, err := node.New(node.Config{Listen: []string{"/ip4/127.0.0.1/tcp/0"}, NoMDNS: true, NoNAT: true, GPUs: "none", Explorer: viewer.ExplorerAddr()})
	if err != nil {
		t.Fatal(err)
	}
	err = other.Start(context.Background())
	other.Close()
	if err == nil || !strings.Contains(err.Error(), "--explorer "+viewer.ExplorerAddr()+": address in use; pick another") {
		t.Fatalf("a second explorer on %s: %v", viewer.ExplorerAddr(), err)
	}
	if _, err := node.New(node.Config{Explorer: "8080"}); err == nil || !strings.Contains(err.Error(), "want HOST:PORT") {
		t.Fatalf("explorer address 8080: %v", err)
	}

	// A queued job shows why it waits and until when.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	job, err := viewer.SubmitJob(ctx, jobSpec(t, 16, "queue: 2m"))
	if err != nil {
		t.Fatal(err)
	}
	waitQueued(t, ctx, viewer, job.ID)
	st = node.ExplorerState{}
	explorerGetJSON(t, base+"/explorer/state", &st)
	if len(st.Jobs) != 1 || st.Jobs[0].State != "queued" || !strings.Contains(st.Jobs[0].Reason, "need 16") ||
		st.Jobs[0].Queue != "2m" || time.Until(st.Jobs[0].QueuedUntil) <= time.Minute {
		t.Fatalf("queued job in the explorer: %+v", st.Jobs)
	}
	if _, err := viewer.CancelJob(ctx, job.ID); err != nil {
		t.Fatal(err)
	}
}

// explorerGetJSON GETs a URL and decodes its JSON body into v.
func explorerGetJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatal(err)
	}
}

// sseEvent is one Server-Sent Event.
type sseEvent struct {
	name, data string
}

// readEvents parses a stream of Server-Sent Events onto a channel, closed
// when the stream ends.
func readEvents(body io.Reader) <-chan sseEvent {
	out := make(chan sseEvent, 64)
	go func() {
		defer close(out)
		sc := bufio.NewScanner(body)
		sc.Buffer(make([]byte, 1<<20), 16<<20)
		var ev sseEvent
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if ev.name != "" || ev.data != "" {
					out <- ev
				}
				ev = sseEvent{}
			case strings.HasPrefix(line, "event: "):
				ev.name = strings.TrimPrefix(line, "event: ")
			case strings.HasPrefix(line, "data: "):
				ev.data += strings.TrimPrefix(line, "data: ")
			}
		}
	}()
	return out
}

func TestExplorerEventsFollowJobsAndEndWithTheNode(t *testing.T) {
	_, _, viewer, _ := explorerMesh(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+viewer.ExplorerAddr()+"/explorer/events", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("GET /explorer/events: %s %q", resp.Status, resp.Header.Get("Content-Type"))
	}
	events := readEvents(resp.Body)
	next := func(what string) sseEvent {
		t.Helper()
		select {
		case ev, ok := <-events:
			if !ok {
				t.Fatalf("the stream ended while waiting for %s", what)
			}
			return ev
		case <-ctx.Done():
			t.Fatalf("no %s in time", what)
		}
		return sseEvent{}
	}
	var snaps []node.ExplorerState
	var points []node.PricePoint
	take := func(ev sseEvent) {
		t.Helper()
		switch ev.name {
		case "snapshot":
			var st node.ExplorerState
			if err := json.Unmarshal([]byte(ev.data), &st); err != nil {
				t.Fatalf("snapshot: %v in %s", err, ev.data)
			}
			if st.History != nil {
				t.Fatal("a streamed snapshot carries the price history; it has events of its own")
			}
			snaps = append(snaps, st)
		case "history", "price":
			var ps []node.PricePoint
			if err := json.Unmarshal([]byte(ev.data), &ps); err != nil {
				t.Fatalf("%s: %v in %s", ev.name, err, ev.data)
			}
			points = append(points, ps...)
		default:
			t.Fatalf("unknown event %q", ev.name)
		}
	}

	// On connect: the price history, then a snapshot.
	if ev := next("the history"); ev.name != "history" {
		t.Fatalf("first event %q, want history", ev.name)
	} else {
		take(ev)
	}
	if ev := next("the first snapshot"); ev.name != "snapshot" {
		t.Fatalf("second event %q, want snapshot", ev.name)
	} else {
		take(ev)
	}
	if snaps[0].Peer.PeerID != viewer.Identity().PeerID.String() || len(snaps[0].Jobs) != 0 {
		t.Fatalf("first snapshot: peer %s, %d jobs", snaps[0].Peer.PeerID, len(snaps[0].Jobs))
	}

	// A job: snapshots follow it to done, with its member and receipt.
	job, err := viewer.SubmitJob(ctx, scriptSpec(t, 1, 0, "echo hi", ""))
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for {
		take(next("snapshots of the job"))
		last := snaps[len(snaps)-1]
		if len(last.Jobs) == 0 {
			continue
		}
		j := last.Jobs[0]
		if j.ID != job.ID {
			t.Fatalf("job %s in the snapshot, want %s", j.ID, job.ID)
		}
		seen[j.State] = true
		if j.State == string(node.JobDone) && len(last.Receipts) == 1 {
			if len(j.Members) != 1 || j.Members[0].State != node.MemberExited || j.Members[0].ExitCode == nil || *j.Members[0].ExitCode != 0 || j.ExitCode == nil || *j.ExitCode != 0 {
				t.Fatalf("done job %+v", j)
			}
			r := last.Receipts[0]
			if r.Job != job.ID || r.ConsumerSig == "" || !r.Verified || r.Anchor != "" || r.Tx != "" {
				t.Fatalf("receipt %+v", r)
			}
			break
		}
		if j.State == string(node.JobFailed) || j.State == string(node.JobCancelled) {
			t.Fatalf("job %s: %s", j.State, j.Reason)
		}
	}
	t.Logf("states seen: %v, in %d snapshots", seen, len(snaps))

	// A point of the price chart every 5 s: the provider's ask, heard
	// through the directory (the board counts it after 2 minutes).
	for !hasPoint(points, "H100-80GB", 2.10) {
		take(next("a point of the price chart"))
	}

	// The node closes: the stream ends.
	closed := make(chan error, 1)
	go func() { closed <- viewer.Close() }()
	for {
		select {
		case _, ok := <-events:
			if ok {
				continue
			}
		case <-ctx.Done():
			t.Fatal("the stream did not end when the node closed")
		}
		break
	}
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-ctx.Done():
		t.Fatal("Close did not return")
	}
}

func hasPoint(ps []node.PricePoint, class string, lowest float64) bool {
	for _, p := range ps {
		if p.Class == class && math.Abs(p.Lowest-lowest) < 1e-9 {
			return true
		}
	}
	return false
}
