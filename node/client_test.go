package node

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gpumesh/gpumesh/node/jobspec"
	"github.com/gpumesh/gpumesh/node/sessionwire"
)

func TestAPIPathEscapesEachSegmentOnce(t *testing.T) {
	for _, tc := range []struct {
		route string
		args  []string
		want  string
	}{
		{routeJobs, nil, "/v0/jobs"},
		{routeJob, []string{"abc"}, "/v0/jobs/abc"},
		{routeJob, []string{"a/b?c#d e"}, "/v0/jobs/a%2Fb%3Fc%23d%20e"},
		{routeJobOutput, []string{"j1", "2", "sub dir/model.bin"}, "/v0/jobs/j1/outputs/2/sub%20dir/model.bin"},
		{routeJobOutput, []string{"j1", "0", "a%b/c?d"}, "/v0/jobs/j1/outputs/0/a%25b/c%3Fd"},
		{routeProof, []string{"k:1"}, "/v0/proofs/k:1"},
	} {
		got, err := apiPath(tc.route, tc.args...)
		if err != nil || got != tc.want {
			t.Errorf("apiPath(%s, %q) = %q, %v; want %q", tc.route, tc.args, got, err, tc.want)
		}
	}
	if _, err := apiPath(routeJob, ""); !errors.Is(err, ErrBadRequest) {
		t.Errorf("an empty job ID: err = %v, want ErrBadRequest", err)
	}
	if _, err := apiPath(routeJob); err == nil {
		t.Error("a route with a wildcard and no value: no error")
	}
	if _, err := apiPath(routeJobs, "x"); err == nil {
		t.Error("a value for a route without wildcards: no error")
	}
}

// wantAPIError fails t unless err is an *APIError that errors.Is target
// and whose message says want.
func wantAPIError(t *testing.T, what string, err, target error, want string) {
	t.Helper()
	var ae *APIError
	if !errors.Is(err, target) || !errors.As(err, &ae) || !strings.Contains(ae.Message, want) {
		t.Fatalf("%s: err = %v, want %v saying %q", what, err, target, want)
	}
	if ae.Code != apiCodes[ae.Status] {
		t.Fatalf("%s: code %q with status %d, want %q", what, ae.Code, ae.Status, apiCodes[ae.Status])
	}
}

// TestClientCallsEveryRouteOfARealNode drives a node started on a data dir
// through its unix socket, one typed Client method a route; it fails when
// apiRoutes gains a route that no case here calls.
func TestClientCallsEveryRouteOfARealNode(t *testing.T) {
	dir := shortTempDir(t)
	n := startNode(t, Config{DataDir: dir, GPUs: "mock:dgxa100", Price: "fixed:2.10"})
	cl, err := NewClient(dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// A job nobody can serve (this peer has A100s): it stays listed.
	spec, err := jobspec.Parse([]byte("name: nobody-serves-it\nimage: busybox\nresources: {gpus: 8, gpu: {model: H100}}\nmaxPrice: 2.50\ntimeout: 1h\n"), "yaml")
	if err != nil {
		t.Fatal(err)
	}
	var submitted []string // oldest first

	called := map[string]bool{}
	for _, tc := range []struct {
		method, route string
		call          func(t *testing.T)
	}{
		{"GET", routeID, func(t *testing.T) {
			id, err := cl.ID(ctx)
			if err != nil || id.PeerID != n.Identity().PeerID.String() {
				t.Fatalf("ID = %+v, %v", id, err)
			}
		}},
		{"GET", routePeers, func(t *testing.T) {
			if peers, err := cl.Peers(ctx); err != nil || len(peers) != 0 {
				t.Fatalf("Peers = %+v, %v; want none", peers, err)
			}
		}},
		{"GET", routeStatus, func(t *testing.T) {
			if st, err := cl.Status(ctx); err != nil || st.PeerID != n.Identity().PeerID.String() {
				t.Fatalf("Status = %+v, %v", st, err)
			}
		}},
		{"GET", routeGPUsLocal, func(t *testing.T) {
			if l, err := cl.LocalGPUs(ctx); err != nil || len(l.Inventory.GPUs) != 8 {
				t.Fatalf("LocalGPUs: %d GPUs, %v; want 8", len(l.Inventory.GPUs), err)
			}
		}},
		{"GET", routeGPUsFind, func(t *testing.T) {
			_, err := cl.FindGPUs(ctx, FindQuery{Count: 5000})
			wantAPIError(t, "a count too big", err, ErrBadRequest, "count: want 0..4096")
			if err := (FindQuery{Count: 5000}).Check(); err == nil {
				t.Fatal("FindQuery.Check let a count of 5000 by")
			}
			if _, err := cl.FindGPUs(ctx, FindQuery{Model: "H100", MaxPrice: "3"}); err != nil {
				t.Fatalf("FindGPUs: %v", err)
			}
			_, err = cl.FindGPUs(ctx, FindQuery{MinScore: 1.5})
			wantAPIError(t, "a min score above 1", err, ErrBadRequest, "min-score: want a score 0..1")
		}},
		{"GET", routePrices, func(t *testing.T) {
			if p, err := cl.Prices(ctx, ""); err != nil || p.Policy != "fixed:2.10" {
				t.Fatalf("Prices = %+v, %v", p, err)
			}
			_, err := cl.Prices(ctx, "H100 80GB")
			wantAPIError(t, "a bad class", err, ErrBadRequest, "want a GPU class")
		}},
		{"POST", routeJobs, func(t *testing.T) {
			bad := spec
			bad.Resources.GPUs = 0
			_, err := cl.SubmitJob(ctx, bad)
			wantAPIError(t, "a spec of 0 GPUs", err, ErrBadRequest, "resources.gpus")
			for range 5 {
				j, err := cl.SubmitJob(ctx, spec)
				if err != nil || j.ID == "" {
					t.Fatalf("SubmitJob = %s %s, %v", j.ID, j.State, err)
				}
				submitted = append(submitted, j.ID)
			}
		}},
		{"GET", routeJobs, func(t *testing.T) {
			var got []string
			q := JobsQuery{Limit: 2}
			for page := 1; ; page++ {
				p, err := cl.Jobs(ctx, q)
				if err != nil {
					t.Fatalf("page %d: %v", page, err)
				}
				if want := min(2, 5-len(got)); len(p.Jobs) != want {
					t.Fatalf("page %d: %d jobs, want %d", page, len(p.Jobs), want)
				}
				for _, j := range p.Jobs {
					got = append(got, j.ID)
				}
				if p.Next == "" {
					if page != 3 {
						t.Fatalf("%d pages of 2 for 5 jobs, want 3", page)
					}
					break
				}
				q.Before = p.Next
			}
			want := slices.Clone(submitted)
			slices.Reverse(want)
			if !slices.Equal(got, want) {
				t.Fatalf("pages list %v, want the jobs newest first: %v", got, want)
			}
			if p, err := cl.Jobs(ctx, JobsQuery{}); err != nil || len(p.Jobs) != 5 || p.Next != "" {
				t.Fatalf("the default page: %d jobs, next %q, %v; want all 5 and no next", len(p.Jobs), p.Next, err)
			}
			for _, q := range []JobsQuery{{Limit: -1}, {Limit: MaxJobsPage + 1}} {
				_, err := cl.Jobs(ctx, q)
				wantAPIError(t, "limit", err, ErrBadRequest, "want 1 to 500 jobs a page (default 50)")
			}
			_, err := cl.Jobs(ctx, JobsQuery{Before: "not a cursor"})
			wantAPIError(t, "a bad cursor", err, ErrBadRequest, `pass the "next" of the page before`)
		}},
		{"GET", routeJob, func(t *testing.T) {
			if j, err := cl.Job(ctx, submitted[0]); err != nil || j.ID != submitted[0] || j.Spec.Name != "nobody-serves-it" {
				t.Fatalf("Job = %s %q, %v", j.ID, j.Spec.Name, err)
			}
			_, err := cl.Job(ctx, "00000000000000000000000000000000")
			wantAPIError(t, "an unknown job", err, ErrNotFound, "no job 00000000000000000000000000000000 on this peer")
			// The ID reaches the node whole, slash and all.
			_, err = cl.Job(ctx, "a/b?c")
			wantAPIError(t, "an ID with a slash", err, ErrNotFound, "no job a/b?c on this peer")
			if _, err := cl.Job(ctx, ""); !errors.Is(err, ErrBadRequest) {
				t.Fatalf("no ID: err = %v, want ErrBadRequest", err)
			}
		}},
		{"POST", routeJobCancel, func(t *testing.T) {
			// The job may have failed already (no peer offers H100s); then
			// it stays as it ended.
			if j, err := cl.CancelJob(ctx, submitted[4]); err != nil || j.ID != submitted[4] || !j.State.Ended() {
				t.Fatalf("CancelJob = %s %s, %v; want it ended", j.ID, j.State, err)
			}
			_, err := cl.CancelJob(ctx, "00000000000000000000000000000000")
			wantAPIError(t, "cancelling an unknown job", err, ErrNotFound, "")
		}},
		{"GET", routeJobLogs, func(t *testing.T) {
			body, err := cl.JobLogs(ctx, submitted[0], false)
			if err != nil {
				t.Fatal(err)
			}
			_, err = io.Copy(io.Discard, body)
			body.Close()
			if err != nil {
				t.Fatal(err)
			}
			_, err = cl.JobLogs(ctx, "00000000000000000000000000000000", true)
			wantAPIError(t, "logs of an unknown job", err, ErrNotFound, "no job 00000000000000000000000000000000")
		}},
		{"GET", routeJobOutput, func(t *testing.T) {
			// The node's own answer, not the mux's: the path was routed.
			_, err := cl.JobOutput(ctx, submitted[0], 0, "sub dir/model?.bin")
			wantAPIError(t, "an output of a job that never ran", err, ErrNotFound, "no such output")
		}},
		{"POST", routeJobSession, func(t *testing.T) {
			_, err := cl.Exec(ctx, "00000000000000000000000000000000", sessionwire.Open{Command: []string{"true"}}, sessionwire.ExecIO{})
			wantAPIError(t, "an exec into an unknown job", err, ErrNotFound, "no such job on this peer")
			_, err = cl.Forward(ctx, submitted[0], 0, 8888)
			wantAPIError(t, "a forward into a job that does not run", err, ErrConflict, "exec and port-forward need a running job")
			// Without the upgrade the node says how to ask.
			path, _ := apiPath(routeJobSession, submitted[0])
			err = cl.call(ctx, "POST", path, nil, sessionwire.Open{Kind: sessionwire.KindForward, Port: 80}, nil)
			wantAPIError(t, "a session without an upgrade", err, ErrBadRequest, "this call upgrades the connection")
		}},
		{"POST", routeJobForward, func(t *testing.T) {
			_, _, err := cl.HoldForward(ctx, "00000000000000000000000000000000", ForwardRequest{Port: 8888, Local: "127.0.0.1:8888"})
			wantAPIError(t, "a forward of an unknown job", err, ErrNotFound, "no such job on this peer")
			_, _, err = cl.HoldForward(ctx, submitted[0], ForwardRequest{Port: 8888, Local: "127.0.0.1:8888"})
			wantAPIError(t, "a forward of a job that does not run", err, ErrConflict, "port-forward needs a running job")
			_, _, err = cl.HoldForward(ctx, submitted[0], ForwardRequest{Port: 0})
			wantAPIError(t, "a forward to port 0", err, ErrBadRequest, "want 1..65535")
		}},
		{"GET", routeReceipts, func(t *testing.T) {
			if rs, err := cl.Receipts(ctx, ""); err != nil || len(rs) != 0 {
				t.Fatalf("Receipts = %v, %v; want none", rs, err)
			}
			if rs, err := cl.Receipts(ctx, submitted[0]); err != nil || len(rs) != 0 {
				t.Fatalf("Receipts of a job = %v, %v; want none", rs, err)
			}
		}},
		{"GET", routeProofs, func(t *testing.T) {
			_, err := cl.Proofs(ctx, "")
			wantAPIError(t, "proofs of a peer that anchors nothing", err, ErrNotFound, "--solana-rpc")
		}},
		{"GET", routeProof, func(t *testing.T) {
			_, err := cl.Proof(ctx, "no-such-receipt")
			wantAPIError(t, "an unknown proof", err, ErrNotFound, "--solana-rpc")
		}},
		{"POST", routeJobCkpt, func(t *testing.T) {
			_, err := cl.GetCheckpoint(ctx, "no-such-job", t.TempDir())
			wantAPIError(t, "the checkpoint of an unknown job", err, ErrNotFound, "no job")
			_, err = cl.GetCheckpoint(ctx, submitted[0], filepath.Join(t.TempDir(), "c"))
			wantAPIError(t, "a job without a checkpoint", err, ErrBadRequest, "has no checkpoint yet")
		}},
		{"POST", routeContent, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "train.py")
			if err := os.WriteFile(file, []byte("print('hi')\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			var reports int
			p, err := cl.AddInput(ctx, file, func(InputProgress) { reports++ })
			if err != nil || p.CID == "" || p.Total != 12 || p.Files != 1 || reports == 0 {
				t.Fatalf("AddInput = %+v (%d reports), %v; want a CID of 12 bytes", p, reports, err)
			}
			if _, err := cl.AddInput(ctx, file+".missing", nil); err == nil || !strings.Contains(err.Error(), "no such file") {
				t.Fatalf("AddInput of a missing file: %v", err)
			}
		}},
		{"POST", routeImages, func(t *testing.T) {
			_, err := cl.AddImage(ctx, "", "", nil)
			wantAPIError(t, "no image", err, ErrBadRequest, "want {")
			// An image the engine lacks (or no engine): left to a registry,
			// or refused where the submitter must send it.
			if added, err := cl.AddImage(ctx, "gpumesh-imgtest:not-here", "", nil); err != nil || added.CID != "" {
				t.Fatalf("AddImage of a missing image = %+v, %v; want no CID, no error", added, err)
			}
			if _, err := cl.AddImage(ctx, "gpumesh-imgtest:not-here", "submitter", nil); err == nil || !strings.Contains(err.Error(), "Docker engine") {
				t.Fatalf("AddImage of a missing image from the submitter: %v", err)
			}
		}},
		{"GET", routeProvider, func(t *testing.T) {
			_, err := cl.Provider(ctx, "not-a-peer", false)
			wantAPIError(t, "a bad peer ID", err, ErrBadRequest, "want a peer ID")
			rep, err := cl.Provider(ctx, n.Identity().PeerID.String(), true)
			if err != nil || rep.Score.Score != 0.8 || rep.Address != n.Identity().SolanaAddress || !strings.Contains(rep.FetchError, "--solana-rpc") {
				t.Fatalf("Provider = %+v, %v; want the prior 0.8 and why no receipts are fetched", rep, err)
			}
		}},
	} {
		called[tc.method+" "+tc.route] = true
		if !t.Run(tc.method+" "+tc.route, tc.call) {
			return // later cases use what earlier ones made
		}
	}
	for _, rt := range n.apiRoutes() {
		if !called[rt.method+" "+rt.pattern] {
			t.Errorf("route %s %s has no case here: give it a Client method and a case", rt.method, rt.pattern)
		}
	}
}

func TestAPIErrorWithoutJSONBodyStillMatchesItsStatus(t *testing.T) {
	dir := shortTempDir(t)
	startNode(t, Config{DataDir: dir})
	cl, err := NewClient(dir)
	if err != nil {
		t.Fatal(err)
	}
	// A route the node does not have: the mux's plain-text 404.
	err = cl.call(context.Background(), "GET", APIVersion+"/nope", nil, nil, nil)
	var ae *APIError
	if !errors.Is(err, ErrNotFound) || !errors.As(err, &ae) || ae.Code != "" || !strings.Contains(ae.Message, "GET /v0/nope: 404") {
		t.Fatalf("err = %#v, want a bare 404 that is ErrNotFound", err)
	}
}
