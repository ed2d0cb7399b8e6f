package node

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/gpumesh/gpumesh/exec"
	"github.com/gpumesh/gpumesh/internal/text"
	"github.com/gpumesh/gpumesh/node/content"
	"github.com/gpumesh/gpumesh/node/images"
	"github.com/gpumesh/gpumesh/node/jobspec"
	"github.com/gpumesh/gpumesh/node/jobwire"
)

// Container images over the mesh (node/images): a job's image that only
// the submitter's Docker engine has goes to its providers as
// content-addressed blobs (its config and layers) through the content
// exchange, named in the spec by its manifest's CID (imageCid).
//
// Who is served what:
//   - the submitter grants the manifest and its blobs to each member's
//     provider for as long as the member runs, as it does inputs;
//   - a provider that fetched an image shares its manifest and blobs with
//     every peer of the swarm (content.Share) and announces them in the
//     DHT, so the next provider that needs the image fetches it from
//     whichever peers have it, submitter or not. The CID is the
//     capability: an image's blobs are named only in its manifest, which
//     a submitter sends only to its job's members (and which names the
//     blobs by the hash of their bytes: knowing a CID is knowing what the
//     image holds). Providers' caches are what makes a swarm not need a
//     registry, and a grant-per-job scheme between providers would need
//     a signed word of a submitter that every cache checks, for bytes
//     whose names are already unguessable. A private swarm keeps the rule
//     that only its members speak the exchange. A user whose image must
//     not outlive its job on strangers' caches should not send it to
//     strangers: a provider that ran it has it anyway.
//
// The blobs stay in the content store, capped and least recently used
// first out (--content-cache); the image loaded stays in the engine,
// capped and evicted as pulled images are (--image-cache).

// imageTempDir is where images are taken apart and put back together.
func (n *Node) imageTempDir() (string, error) {
	state, err := n.stateDir()
	if err != nil {
		return "", err
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	dir := filepath.Join(state, "images-tmp", hex.EncodeToString(b[:]))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	return dir, nil
}

func (n *Node) imageEngine(ctx context.Context) (*exec.Docker, error) {
	ex, err := n.dockerExecutor(ctx)
	if err != nil {
		return nil, err
	}
	d, ok := ex.(*exec.Docker)
	if !ok {
		return nil, errors.New("the docker executor is not a Docker engine")
	}
	return d, nil
}

func (n *Node) imageMax() int64 {
	switch {
	case n.cfg.PullMax > 0:
		return n.cfg.PullMax
	case n.cfg.PullMax < 0:
		return n.content.Store().Max()
	}
	return exec.DefaultPullMaxBytes
}

// exportedImages is what this submitter exported: image ID -> manifest
// CID, so a second job of the same image exports nothing.
type exportedImages struct {
	mu  sync.Mutex
	ids map[string]cid.Cid
}

// addImage resolves a job's image on the submitter: an image its engine
// has becomes a manifest on the mesh (spec.ImageCID), unless the spec
// says registry or names the CID already. imageFrom: submitter with no
// such image here is an error that says what to do.
func (n *Node) addImage(ctx context.Context, spec *jobspec.Spec, progress content.Progress) error {
	if spec.Image == "" || spec.ImageCID != "" || spec.ImageFrom == jobspec.ImageFromRegistry {
		return nil
	}
	added, err := n.AddImage(ctx, spec.Image, spec.ImageFrom, progress)
	if err != nil {
		return err
	}
	spec.ImageCID = added.CID
	return nil
}

// ImageAdded is an image this peer put on the mesh: its manifest's CID
// ("" where the engine has no such image and the registry is left to
// provide it), its bytes and layers.
type ImageAdded struct {
	CID    string `json:"cid,omitempty"`
	Bytes  int64  `json:"bytes,omitempty"`
	Layers int    `json:"layers,omitempty"`
}

// AddImage puts the image ref of this peer's Docker engine on the mesh
// (content store; announced to no one, granted to a job's providers), as
// a job's spec names it with from (jobspec.ImageFrom*): "" or
// "submitter". With "", an image the engine lacks (or no engine) is not
// an error: the answer has no CID and providers pull from a registry.
func (n *Node) AddImage(ctx context.Context, ref, from string, progress content.Progress) (ImageAdded, error) {
	must := from == jobspec.ImageFromSubmitter
	d, err := n.imageEngine(ctx)
	if err != nil {
		if must {
			return ImageAdded{}, fmt.Errorf("%w: image %s: imageFrom: submitter, but this peer has no Docker engine to send it from (%v); start one, or leave imageFrom out so providers pull it from a registry", ErrBadInput, ref, err)
		}
		return ImageAdded{}, nil
	}
	info, ok, err := d.Image(ctx, ref)
	id := info.ID
	switch {
	case err != nil && must:
		return ImageAdded{}, fmt.Errorf("%w: image %s: %v", ErrBadInput, ref, err)
	case err != nil || !ok:
		if must {
			return ImageAdded{}, fmt.Errorf("%w: image %s is not in this peer's Docker engine (see `docker images`): build or pull it here first, or leave imageFrom out so providers pull it from a registry", ErrBadInput, ref)
		}
		return ImageAdded{}, nil
	}
	root, m, err := n.exportImage(ctx, d, ref, id, progress)
	if err != nil {
		return ImageAdded{}, fmt.Errorf("%w: image %s: %v", ErrBadInput, ref, err)
	}
	return ImageAdded{CID: root.String(), Bytes: m.Bytes(), Layers: len(m.Layers)}, nil
}

// exportImage adds the image ref (the engine's id) to the content store:
// its config and layers as they are in `docker save`, each digest
// checked, and a manifest naming them. Its CID is the image on the mesh.
func (n *Node) exportImage(ctx context.Context, d *exec.Docker, ref, id string, progress content.Progress) (cid.Cid, *images.Manifest, error) {
	n.exported.mu.Lock()
	had, ok := n.exported.ids[id]
	n.exported.mu.Unlock()
	if ok { // the manifest still in the store: its blobs are too, unless the store's cap evicted them
		if m, err := n.readManifest(ctx, had); err == nil {
			return had, m, nil
		}
	}
	dir, err := n.imageTempDir()
	if err != nil {
		return cid.Undef, nil, err
	}
	defer os.RemoveAll(dir)
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(d.SaveImage(ctx, ref, pw)) }()
	saved, err := images.Export(pr, filepath.Join(dir, "saved"), n.imageMax())
	pr.CloseWithError(errors.New("export read"))
	if err != nil {
		return cid.Undef, nil, err
	}
	var total, done int64
	for _, f := range append([]images.File{saved.Config}, saved.Layers...) {
		total += f.Size
	}
	add := func(f images.File) (images.Blob, error) {
		base := done
		root, err := n.content.Add(ctx, f.Path, 0, func(d, _ int64) {
			if progress != nil {
				progress(base+d, total)
			}
		})
		if err != nil {
			return images.Blob{}, err
		}
		done += f.Size
		return images.Blob{Digest: f.Digest, Size: f.Size, CID: root.CID.String()}, nil
	}
	m := &images.Manifest{V: images.Version, Ref: ref}
	if m.Config, err = add(saved.Config); err != nil {
		return cid.Undef, nil, err
	}
	cache := map[string]images.Blob{}
	for _, l := range saved.Layers {
		b, ok := cache[l.Digest]
		if !ok {
			if b, err = add(l); err != nil {
				return cid.Undef, nil, err
			}
			cache[l.Digest] = b
		}
		m.Layers = append(m.Layers, b)
	}
	mb, err := m.Encode()
	if err != nil {
		return cid.Undef, nil, err
	}
	mp := filepath.Join(dir, "manifest.json")
	if err := os.WriteFile(mp, mb, 0o600); err != nil {
		return cid.Undef, nil, err
	}
	root, err := n.content.Add(ctx, mp, 0, nil)
	if err != nil {
		return cid.Undef, nil, err
	}
	n.exported.mu.Lock()
	if n.exported.ids == nil {
		n.exported.ids = map[string]cid.Cid{}
	}
	n.exported.ids[id] = root.CID
	n.exported.mu.Unlock()
	n.log.Info("image added for the mesh", "image", ref, "id", id, "cid", root.CID, "bytes", m.Bytes(), "layers", len(m.Layers))
	return root.CID, m, nil
}

// readManifest reads the image manifest root from the store (fetched or
// added) and checks it.
func (n *Node) readManifest(ctx context.Context, root cid.Cid) (*images.Manifest, error) {
	r, err := n.content.Open(ctx, root)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	b, err := io.ReadAll(io.LimitReader(r, images.MaxManifest+1))
	if err != nil {
		return nil, err
	}
	return images.Decode(b)
}

// imageRoots is the roots of a job's image on the mesh: its manifest and
// blobs (from the store), for the grants to its providers.
func (n *Node) imageRoots(ctx context.Context, spec jobspec.Spec) []cid.Cid {
	if spec.ImageCID == "" {
		return nil
	}
	root, err := jobspec.ParseCID(spec.ImageCID)
	if err != nil {
		return nil
	}
	m, err := n.readManifest(ctx, root)
	if err != nil {
		// Not in this peer's store (a spec naming a CID others have):
		// its providers find it elsewhere.
		return nil
	}
	roots := []cid.Cid{root}
	for _, b := range m.Blobs() {
		if c, err := images.ParseCID(b.CID); err == nil {
			roots = append(roots, c)
		}
	}
	return roots
}

// ImageReport is where a member's image came from and what moved for it.
type ImageReport struct {
	Image  string   `json:"image"`           // as the job names it
	Source string   `json:"source"`          // "provider" (its engine had it), "mesh" or "registry" (the engine pulls it)
	Bytes  int64    `json:"bytes,omitempty"` // of the image's config and layers
	Moved  int64    `json:"moved"`           // of them, bytes fetched over the network for this job
	From   []string `json:"from,omitempty"`  // peers blocks came from, most bytes first
	Millis int64    `json:"millis,omitempty"`
}

// Image sources (ImageReport.Source).
const (
	ImageFromProvider = "provider"
	ImageFromMesh     = "mesh"
	ImageFromRegistry = "registry"
)

// imageProgressEvery is how often a provider says how far an image's
// fetch is.
const imageProgressEvery = time.Second

// placeImage makes a job's image ready in the provider's engine and
// returns the name to run it by. An image on the mesh is fetched (the
// blobs this peer lacks, from any peer that has them), checked blob by
// blob against its digests, and loaded under its own name
// (images.Manifest.Tag); an image the engine has already (by ID) moves
// nothing. Within the pull's bounds: by (the start deadline) and
// PullTimeout in time, PullMax in bytes. Blobs come on a bulk stream from
// the submitter (from) where it holds them, else from peers whose
// provider records name them, else over bitswap from any peer that
// shares them. note is told progress for the job's log. Nothing is
// loaded unless every digest matched.
func (n *Node) placeImage(ctx context.Context, spec jobspec.Spec, d *exec.Docker, by time.Time, note func(string), from peer.ID) (ref string, rep ImageReport, err error) {
	rep = ImageReport{Image: spec.Image, Source: ImageFromRegistry}
	if spec.ImageCID == "" {
		return spec.Image, rep, nil
	}
	start := time.Now()
	timeout := n.cfg.PullTimeout
	if timeout <= 0 {
		timeout = exec.DefaultPullTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if !by.IsZero() {
		var c2 context.CancelFunc
		ctx, c2 = context.WithDeadline(ctx, by)
		defer c2()
	}
	fail := func(format string, a ...any) (string, ImageReport, error) {
		return "", rep, fmt.Errorf("%w: image %s over the mesh (%s): %s", exec.ErrNoImage, spec.Image, spec.ImageCID, fmt.Sprintf(format, a...))
	}
	root, err := jobspec.ParseCID(spec.ImageCID)
	if err != nil {
		return fail("%v", err)
	}
	before := n.ledgers()
	_, release, err := n.content.FetchFrom(ctx, root, images.MaxManifest+content.MaxBlock, from)
	if err != nil {
		return fail("its manifest: %v", err)
	}
	defer release()
	// Moved counts the config's and the layers' bytes, not the manifest's.
	moved0 := n.content.Stats().FetchedBytes
	defer func() {
		rep.Moved = max(n.content.Stats().FetchedBytes-moved0, 0)
		rep.From = n.servedBy(before)
		rep.Millis = time.Since(start).Milliseconds()
	}()
	m, err := n.readManifest(ctx, root)
	if err != nil {
		return fail("its manifest: %v", err)
	}
	rep.Bytes = m.Bytes()
	// The engine has it: under our name for it, or by its ID (the
	// config's digest, on the classic store), with the manifest's layers.
	tag := m.Tag()
	if info, ok, err := d.Image(ctx, tag); err == nil && ok && sameLayers(info, m) {
		rep.Source = ImageFromProvider
		n.shareImage(ctx, tag, root, m)
		return tag, rep, nil
	}
	if info, ok, err := d.Image(ctx, m.ID()); err == nil && ok && sameLayers(info, m) {
		// The provider's own image (pulled or built here): run by its ID,
		// no name of ours added to it.
		rep.Source = ImageFromProvider
		n.shareImage(ctx, info.ID, root, m)
		return info.ID, rep, nil
	}
	rep.Source = ImageFromMesh
	if max := n.imageMax(); rep.Bytes > max {
		return fail("%d bytes, more than this provider takes (--pull-max %d); use a smaller image or a provider that takes larger ones", rep.Bytes, max)
	}
	// The blobs, several at once (each one bitswap session, which asks
	// every peer that has its blocks).
	blobs := m.Blobs()
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		releases []func()
		errs     []error
	)
	defer func() {
		for _, r := range releases {
			r()
		}
	}()
	sem := make(chan struct{}, 4)
	stopProgress := n.imageProgress(ctx, m, note)
	for _, b := range blobs {
		c, err := images.ParseCID(b.CID)
		if err != nil {
			stopProgress()
			return fail("%v", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			_, rel, err := n.content.FetchFrom(ctx, c, b.Size+b.Size/64+content.MaxBlock, from)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, fmt.Errorf("blob %s: %w", b.Digest, err))
				return
			}
			releases = append(releases, rel)
		}()
	}
	wg.Wait()
	stopProgress()
	if len(errs) > 0 {
		if errors.Is(errs[0], content.ErrTooBig) {
			return fail("%v: this provider's content cache (--content-cache) cannot hold it", errs[0])
		}
		return fail("%v", errors.Join(errs...))
	}
	// Load: the blobs go to the engine as `docker load` reads them, each
	// checked against its digest on the way; the manifest that makes it
	// an image goes last, so a mismatch loads nothing.
	pr, pw := io.Pipe()
	werr := make(chan error, 1)
	go func() {
		err := images.WriteLoad(pw, m, tag, func(b images.Blob) (io.ReadCloser, error) {
			c, err := images.ParseCID(b.CID)
			if err != nil {
				return nil, err
			}
			return n.content.Open(ctx, c)
		})
		pw.CloseWithError(err)
		werr <- err
	}()
	lerr := d.LoadImage(ctx, pr)
	pr.CloseWithError(errors.New("the engine stopped reading"))
	if err := <-werr; err != nil {
		// The stream's own error says more than the engine's.
		return fail("%v", err)
	}
	if lerr != nil {
		return fail("%v", lerr)
	}
	info, ok, err := d.Image(ctx, tag)
	switch {
	case err != nil:
		return fail("%v", err)
	case !ok:
		return fail("the engine did not load it")
	case !sameLayers(info, m):
		return fail("the engine loaded it with the layers %v, its manifest names others", info.Layers)
	}
	if err := d.Adopt(ctx, tag); err != nil {
		n.log.Warn("image not in the image cache", "image", tag, "err", err)
	}
	n.shareImage(ctx, tag, root, m)
	return tag, rep, nil
}

// sharedImages is what a provider shares of the images in its engine:
// the roots (manifest, blobs) of each, by the engine's name for it, and
// how many of those images hold each root (two images may have a layer
// in common), so that an image the image cache removes stops being
// served, and a layer another image still holds does not.
type sharedImages struct {
	mu    sync.Mutex           // guards the fields below
	refs  map[string][]cid.Cid // engine name -> roots shared for it
	count map[cid.Cid]int      // root -> images sharing it
}

// shareImage lets every peer fetch the image's manifest and blobs from
// here, and announces them (see the top of this file for why), until the
// engine's image cache removes ref (imagesRemoved).
func (n *Node) shareImage(ctx context.Context, ref string, root cid.Cid, m *images.Manifest) {
	roots := []cid.Cid{root}
	for _, b := range m.Blobs() {
		if c, err := images.ParseCID(b.CID); err == nil {
			roots = append(roots, c)
		}
	}
	var shared []cid.Cid
	for _, c := range roots {
		if err := n.content.Share(ctx, c); err != nil {
			// Not whole here (the engine had the image, the blobs never
			// came): nothing to serve.
			continue
		}
		shared = append(shared, c)
		n.content.Announce(c)
	}
	s := &n.shared
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.refs == nil {
		s.refs, s.count = map[string][]cid.Cid{}, map[cid.Cid]int{}
	}
	had := map[cid.Cid]bool{}
	for _, c := range s.refs[ref] {
		had[c] = true
	}
	for _, c := range shared {
		if !had[c] {
			s.refs[ref] = append(s.refs[ref], c)
			s.count[c]++
		}
	}
}

// imagesRemoved is told the images the engine's image cache removed: what
// was shared for them alone is shared no more (the blobs stay in the
// content store, least recently used out first).
func (n *Node) imagesRemoved(refs []string) {
	s := &n.shared
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ref := range refs {
		for _, c := range s.refs[ref] {
			if s.count[c]--; s.count[c] <= 0 {
				delete(s.count, c)
				n.content.Unshare(c)
			}
		}
		delete(s.refs, ref)
	}
}

// imageProgress tells note, every imageProgressEvery, the bytes fetched
// so far; the func it returns stops it.
func (n *Node) imageProgress(ctx context.Context, m *images.Manifest, note func(string)) (stop func()) {
	if note == nil {
		return func() {}
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	base := n.content.Stats().FetchedBytes
	go func() {
		defer close(done)
		t := time.NewTicker(imageProgressEvery)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				got := n.content.Stats().FetchedBytes - base
				note(fmt.Sprintf("image %s: %s of %s fetched", m.Ref, mib(got), mib(m.Bytes())))
			}
		}
	}()
	return func() { cancel(); <-done }
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// ledgers is the bytes this peer received from each connected peer over
// the exchange so far.
func (n *Node) ledgers() map[peer.ID]uint64 {
	out := map[peer.ID]uint64{}
	for _, p := range n.host.Network().Peers() {
		out[p] = n.content.Received(p)
	}
	return out
}

// servedBy is the peers that sent this peer blocks since before, most
// bytes first.
func (n *Node) servedBy(before map[peer.ID]uint64) []string {
	type got struct {
		p peer.ID
		b uint64
	}
	var all []got
	for p, b := range n.ledgers() {
		if b > before[p] {
			all = append(all, got{p, b - before[p]})
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i].b > all[j].b })
	var out []string
	for _, g := range all {
		out = append(out, g.p.String())
	}
	return out
}

func (r ImageReport) String() string {
	s := fmt.Sprintf("image %s: ", r.Image)
	switch r.Source {
	case ImageFromProvider:
		s += "on this provider already"
	case ImageFromMesh:
		s += fmt.Sprintf("over the mesh, %s moved of %s", mib(r.Moved), mib(r.Bytes))
		if len(r.From) > 0 {
			s += fmt.Sprintf(" from %d peer(s)", len(r.From))
		}
	default:
		s += "from a registry"
	}
	return s + fmt.Sprintf(" (%s)", (time.Duration(r.Millis)*time.Millisecond).Round(time.Millisecond))
}

func (r ImageReport) wire() *jobwire.ImageFrame {
	return &jobwire.ImageFrame{Source: r.Source, Bytes: r.Bytes, Moved: max(r.Moved, 0), From: r.From[:min(len(r.From), jobwire.MaxImagePeers)], Millis: r.Millis}
}

func imageReportOf(image string, f *jobwire.ImageFrame) *ImageReport {
	return &ImageReport{Image: image, Source: text.ClipRaw(f.Source), Bytes: f.Bytes, Moved: f.Moved, From: f.From, Millis: f.Millis}
}

// ImageRequest asks the node to put an image of its engine on the mesh
// (POST /v0/images).
type ImageRequest struct {
	Image string `json:"image"`
	From  string `json:"from,omitempty"` // the spec's imageFrom: "" or "submitter"
}

// ImageProgress is one line of the answer to an ImageRequest: bytes added
// so far of a total, then a last line with Done set and the image added
// (no CID: the engine has no such image, and the registry is left to
// provide it), or the error.
type ImageProgress struct {
	Added int64       `json:"added"`
	Total int64       `json:"total"`
	Done  bool        `json:"done,omitempty"`
	Image *ImageAdded `json:"image,omitempty"`
	Error string      `json:"error,omitempty"`
}

func (n *Node) serveAddImage(w http.ResponseWriter, r *http.Request) {
	var req ImageRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 8<<10)).Decode(&req); err != nil || req.Image == "" {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("want {\"image\": \"name:tag\", \"from\": \"\" or \"submitter\"}: %v", err))
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
	added, err := n.AddImage(r.Context(), req.Image, req.From, func(done, total int64) {
		if now := time.Now(); now.Sub(last) >= progressEvery {
			last = now
			_ = enc.Encode(ImageProgress{Added: done, Total: total})
			flush()
		}
	})
	if err != nil {
		_ = enc.Encode(ImageProgress{Done: true, Error: err.Error()})
		return
	}
	_ = enc.Encode(ImageProgress{Added: added.Bytes, Total: added.Bytes, Done: true, Image: &added})
}

// AddImage has the node put image (a name its Docker engine knows) on the
// mesh (POST /v0/images), as a submit of a spec with that image and
// imageFrom from would; progress, if set, is told each report. The
// answer's CID is "" where the engine has no such image and from allows
// a registry.
func (c *Client) AddImage(ctx context.Context, image, from string, progress func(ImageProgress)) (ImageAdded, error) {
	apiPathOf, err := apiPath(routeImages)
	if err != nil {
		return ImageAdded{}, err
	}
	body, err := json.Marshal(ImageRequest{Image: image, From: from})
	if err != nil {
		return ImageAdded{}, err
	}
	resp, err := c.do(ctx, c.streaming, http.MethodPost, apiPathOf, nil, bytes.NewReader(body))
	if err != nil {
		return ImageAdded{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		answer, _ := io.ReadAll(io.LimitReader(resp.Body, maxAPIResponse))
		return ImageAdded{}, apiStatusError(resp, answer)
	}
	dec := json.NewDecoder(io.LimitReader(resp.Body, maxAPIResponse))
	for {
		var p ImageProgress
		if err := dec.Decode(&p); err != nil {
			return ImageAdded{}, fmt.Errorf("local API: adding image %s: the node's answer ended early: %w", image, err)
		}
		switch {
		case p.Error != "":
			return ImageAdded{}, errors.New(p.Error)
		case p.Done:
			if p.Image == nil {
				return ImageAdded{}, nil
			}
			return *p.Image, nil
		case progress != nil:
			progress(p)
		}
	}
}

// sameLayers says whether the engine's image has the manifest's layers.
func sameLayers(info exec.ImageInfo, m *images.Manifest) bool {
	if len(info.Layers) != len(m.Layers) {
		return false
	}
	for i, l := range m.Layers {
		if info.Layers[i] != l.Digest {
			return false
		}
	}
	return true
}
