package node

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/gpumesh/gpumesh/dht"
	"github.com/gpumesh/gpumesh/exec"
	"github.com/gpumesh/gpumesh/node/content"
	"github.com/gpumesh/gpumesh/node/jobspec"
)

// DefaultMaxInputSize is the most bytes of inputs one job may have, on
// the submitter (added) and on a provider (fetched): Config.MaxInputSize.
const DefaultMaxInputSize = 10 << 30

// ErrBadInput marks an input the submitter cannot send: a missing path,
// one over the size limit, one that is not files and folders.
var ErrBadInput = errors.New("bad job input")

func (n *Node) maxInputSize() int64 {
	if n.cfg.MaxInputSize > 0 {
		return n.cfg.MaxInputSize
	}
	return DefaultMaxInputSize
}

// startContent opens the content store in the data dir and starts the
// block exchange under the swarm's protocol prefix, announcing in the DHT.
func (n *Node) startContent() error {
	state, err := n.stateDir()
	if err != nil {
		return err
	}
	// What a crash left of images being taken apart or put together
	// (imageTempDir): no run of this node uses it any more.
	if err := os.RemoveAll(filepath.Join(state, "images-tmp")); err != nil {
		n.log.Warn("leftover image files not removed", "dir", filepath.Join(state, "images-tmp"), "err", err)
	}
	n.content, err = content.New(n.host, content.Config{
		Dir:      filepath.Join(state, "content"),
		MaxBytes: n.cfg.ContentCache,
		Prefix:   dht.ProtocolPrefix(n.cfg.Swarm.ID()),
		Routing:  n.dht,
		Log:      n.log,

		NoExchange: n.cfg.NoBlockExchange,
	})
	return err
}

// Content is the peer's content layer: its store and block exchange.
func (n *Node) Content() *content.Service { return n.content }

// AddInput adds the file or folder at path (absolute) to this peer's
// content store and announces it; progress, if set, is told the bytes
// read. It is what a job's src input becomes: its CID.
func (n *Node) AddInput(ctx context.Context, path string, progress content.Progress) (content.Root, error) {
	if !filepath.IsAbs(path) {
		return content.Root{}, fmt.Errorf("%w: %s: a relative path; give an absolute one (the CLI makes src absolute from the spec file's folder)", ErrBadInput, path)
	}
	root, err := n.content.Add(ctx, path, n.maxInputSize(), progress)
	switch {
	case errors.Is(err, content.ErrTooBig):
		return content.Root{}, fmt.Errorf("%w: %v: this peer sends at most %d bytes of inputs a job (--max-input-size)", ErrBadInput, err, n.maxInputSize())
	case err != nil:
		return content.Root{}, fmt.Errorf("%w: %v", ErrBadInput, err)
	}
	n.content.Announce(root.CID)
	return root, nil
}

// addInputs turns every src input of spec into its CID (adding it to the
// store), before anything is asked of the swarm: a missing path or an
// input too big fails the submit and leases nothing.
func (n *Node) addInputs(ctx context.Context, spec *jobspec.Spec) error {
	var total int64
	ins := append([]jobspec.Input(nil), spec.Inputs...)
	for i, in := range ins {
		if in.Src == "" {
			continue
		}
		root, err := n.AddInput(ctx, in.Src, nil)
		if err != nil {
			return fmt.Errorf("inputs[%d] (%s): %w", i, in.Src, err)
		}
		if total += root.Bytes; total > n.maxInputSize() {
			return fmt.Errorf("%w: inputs: %d bytes in all, more than this peer sends a job (--max-input-size %d)", ErrBadInput, total, n.maxInputSize())
		}
		// The path stays on this machine; providers get the CID.
		ins[i].Src, ins[i].CID = "", root.CID.String()
	}
	spec.Inputs = ins
	return nil
}

// grantMember lets provider fetch from this peer's store the inputs of
// job j and the checkpoint restore (a CID, or ""), until the func it
// returns is called. A root not in the store is logged: the member's
// fetch of it fails, and says so.
func (n *Node) grantMember(ctx context.Context, j Job, restore string, provider peer.ID) (revoke func()) {
	var roots []string
	for _, in := range j.Spec.Inputs {
		if in.CID != "" {
			roots = append(roots, in.CID)
		}
	}
	if restore != "" {
		roots = append(roots, restore)
	}
	for _, c := range n.imageRoots(ctx, j.Spec) {
		roots = append(roots, c.String())
	}
	var granted []cid.Cid
	for _, s := range roots {
		root, err := jobspec.ParseCID(s)
		if err == nil {
			err = n.content.Grant(ctx, root, provider)
		}
		if err != nil {
			n.log.Warn("job content not granted to its provider", "job", j.ID, "cid", s, "provider", provider, "err", err)
			continue
		}
		granted = append(granted, root)
	}
	return func() {
		for _, root := range granted {
			n.content.Revoke(root, provider)
		}
	}
}

// placeInputs fetches a member's inputs and puts them where its work sees
// them, read-only: the process executor's under work (dst without its
// leading "/"), a container's in runDir/inputs/<i>, mounted at dst. Only
// the CIDs of the job accepted are fetched, within this provider's
// MaxInputSize in all, first on a bulk stream from the submitter (from,
// which holds them), the rest over bitswap; a URL's body must hash to
// its sha256. The blocks
// fetched stay in the cache for this provider's next job, served to no
// other peer (nothing of it is granted) nor announced. done removes
// what was placed and lets the cache drop the blocks again; it is nil on
// error, when nothing is left behind.
func (n *Node) placeInputs(ctx context.Context, ins []jobspec.Input, executor, runDir, work string, by time.Time, from peer.ID) (mounts []exec.Mount, done func(), err error) {
	var placed []string
	var releases []func()
	cleanup := func() {
		for _, p := range placed {
			_ = content.RemoveTree(p)
		}
		for _, r := range releases {
			r()
		}
	}
	defer func() {
		if err != nil {
			cleanup()
			mounts, done = nil, nil
		}
	}()
	if len(ins) == 0 {
		return nil, cleanup, nil
	}
	ctx, cancel := context.WithDeadline(ctx, by)
	defer cancel()
	budget := n.maxInputSize()
	for i, in := range ins {
		target := filepath.Join(work, filepath.FromSlash(strings.TrimPrefix(in.Dst, "/")))
		if executor != "process" {
			target = filepath.Join(runDir, "inputs", strconv.Itoa(i))
		}
		if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
			return nil, nil, fmt.Errorf("inputs[%d]: %w", i, err)
		}
		placed = append(placed, target)
		var size int64
		switch {
		case in.CID != "":
			root, err := jobspec.ParseCID(in.CID)
			if err != nil {
				return nil, nil, fmt.Errorf("inputs[%d]: cid %s: %w", i, in.CID, err)
			}
			st, release, err := n.content.FetchFrom(ctx, root, budget, from)
			if err != nil {
				if errors.Is(err, content.ErrTooBig) {
					return nil, nil, fmt.Errorf("inputs[%d] (%s): %v: this provider takes at most %d bytes of inputs a job (--max-input-size)", i, in.Dst, err, n.maxInputSize())
				}
				return nil, nil, fmt.Errorf("inputs[%d] (%s): %w", i, in.Dst, err)
			}
			releases = append(releases, release)
			n.log.Info("job input fetched", "cid", root, "bytes", st.Bytes, "fetched", st.FetchedBytes)
			if err := n.content.WriteTo(ctx, root, target); err != nil {
				return nil, nil, fmt.Errorf("inputs[%d] (%s): %w", i, in.Dst, err)
			}
			size = st.Bytes
		case in.URL != "":
			if size, err = fetchURL(ctx, in, target, budget); err != nil {
				return nil, nil, fmt.Errorf("inputs[%d] (%s): %w", i, in.Dst, err)
			}
		default:
			return nil, nil, fmt.Errorf("inputs[%d] (%s): no cid or url: the submitter did not add its src", i, in.Dst)
		}
		budget -= size
		if executor != "process" {
			mounts = append(mounts, exec.Mount{Source: target, Target: in.Dst})
		}
	}
	return mounts, cleanup, nil
}

// fetchURL downloads in.URL into path (read-only), at most max bytes, and
// checks its SHA-256; on a mismatch the file is removed.
func fetchURL(ctx context.Context, in jobspec.Input, path string, max int64) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, in.URL, nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, fmt.Errorf("fetch %s: %w", in.URL, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("fetch %s: %s", in.URL, resp.Status)
	}
	if resp.ContentLength > max {
		return 0, fmt.Errorf("%s is %d bytes, more than this provider takes (--max-input-size %d)", in.URL, resp.ContentLength, max)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return 0, err
	}
	h := sha256.New()
	size, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(resp.Body, max+1))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	switch got := hex.EncodeToString(h.Sum(nil)); {
	case err != nil:
		err = fmt.Errorf("fetch %s: %w", in.URL, err)
	case size > max:
		err = fmt.Errorf("%s is more than %d bytes, more than this provider takes (--max-input-size)", in.URL, max)
	case got != strings.ToLower(in.SHA256):
		err = fmt.Errorf("%s has sha256 %s, the job spec says %s: the file changed or the spec is wrong", in.URL, got, in.SHA256)
	}
	if err != nil {
		_ = os.Remove(path)
		return 0, err
	}
	return size, nil
}

// AddRequest asks the node to add a file or folder of its machine to its
// content store (POST /v0/content).
type AddRequest struct {
	Path string `json:"path"` // absolute
}

// InputProgress is one line of the answer to an AddRequest: bytes read so
// far of a total, then a last line with the CID (or the error).
type InputProgress struct {
	Done  int64  `json:"done"`
	Total int64  `json:"total"`
	CID   string `json:"cid,omitempty"`
	Files int    `json:"files,omitempty"`
	Error string `json:"error,omitempty"`
}

// progressEvery is how often an add reports its progress, at most.
const progressEvery = 250 * time.Millisecond

func (n *Node) serveAddInput(w http.ResponseWriter, r *http.Request) {
	var req AddRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 8<<10)).Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, "want {\"path\": \"/absolute/path\"}: "+err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	enc := json.NewEncoder(w)
	flush := func() {
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
	}
	var last time.Time
	root, err := n.AddInput(r.Context(), req.Path, func(done, total int64) {
		if now := time.Now(); now.Sub(last) >= progressEvery {
			last = now
			_ = enc.Encode(InputProgress{Done: done, Total: total})
			flush()
		}
	})
	if err != nil {
		_ = enc.Encode(InputProgress{Error: err.Error()})
		return
	}
	_ = enc.Encode(InputProgress{Done: root.Bytes, Total: root.Bytes, CID: root.CID.String(), Files: root.Files})
}
