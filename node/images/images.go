// Package images moves container images between peers as
// content-addressed layers, a thin layer on the mesh's one content
// exchange (node/content). It links no Docker, no libp2p and no node: it
// turns what `docker save` writes into files named by their digests and a
// Manifest that lists them, and turns a Manifest's files back into what
// `docker load` reads, checking every digest on the way.
//
// An image on the mesh is named by its Manifest's CID. The Manifest gives,
// for the image's config and for each of its layers (the uncompressed
// layer tars, base first), its SHA-256 digest as the image itself names it
// (the config's digest is the image ID; a layer's is the config's
// rootfs.diff_ids entry) and the CID of a UnixFS DAG of its bytes. A DAG's
// blocks are checked against their CIDs as they arrive; the reassembled
// bytes are checked against the digest as they are written for the
// engine, so a Manifest whose CIDs and digests disagree loads nothing.
package images

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/ipfs/go-cid"
	mh "github.com/multiformats/go-multihash"
)

// Bounds of a Manifest and of what Export reads.
const (
	Version      = 1
	MaxManifest  = 256 << 10 // bytes of an encoded Manifest
	MaxLayers    = 256       // layers of an image (the engines' own limit is 127)
	MaxConfig    = 4 << 20   // bytes of an image config
	maxRef       = 512       // bytes of an image reference
	maxCID       = 128       // characters of a CID
	maxTarFiles  = 4 * MaxLayers
	maxEntryName = 512
)

// ErrDigest marks bytes whose SHA-256 is not the digest the image names.
var ErrDigest = errors.New("images: digest mismatch")

// Manifest is an image on the mesh: its config and layers, each by its
// digest and by the CID of its bytes.
type Manifest struct {
	V      int    `json:"v"`      // Version
	Ref    string `json:"ref"`    // the reference the submitter gave (its engine's name of the image)
	Config Blob   `json:"config"` // the image config; its digest is the image ID
	Layers []Blob `json:"layers"` // uncompressed layer tars, base first
}

// Blob is one file of an image.
type Blob struct {
	Digest string `json:"digest"` // "sha256:" and 64 lowercase hex digits
	Size   int64  `json:"size"`   // bytes
	CID    string `json:"cid"`    // a UnixFS DAG of its bytes (SHA-256 blocks)
}

// ID is the image ID an engine gives the image: its config's digest.
func (m *Manifest) ID() string { return m.Config.Digest }

// Tag is the name a provider loads the image under: its own repository,
// so an image from the mesh never takes the name of one the provider has
// (a submitter cannot replace a provider's "pytorch/pytorch:2.4"), and
// one name per content.
func (m *Manifest) Tag() string {
	return "gpumesh-image:" + strings.TrimPrefix(m.Config.Digest, "sha256:")
}

// Bytes is the size of the image's config and layers; a layer listed twice
// counts once (it moves once).
func (m *Manifest) Bytes() int64 {
	total := m.Config.Size
	seen := map[string]bool{}
	for _, l := range m.Layers {
		if !seen[l.Digest] {
			seen[l.Digest] = true
			total += l.Size
		}
	}
	return total
}

// Blobs is the config and the layers, each digest once.
func (m *Manifest) Blobs() []Blob {
	out := []Blob{m.Config}
	seen := map[string]bool{m.Config.Digest: true}
	for _, l := range m.Layers {
		if !seen[l.Digest] {
			seen[l.Digest] = true
			out = append(out, l)
		}
	}
	return out
}

// Encode is the Manifest's bytes (JSON).
func (m *Manifest) Encode() ([]byte, error) {
	if err := m.Check(); err != nil {
		return nil, err
	}
	return json.Marshal(m)
}

// Decode reads a Manifest from a stranger's bytes, within the bounds.
func Decode(b []byte) (*Manifest, error) {
	if len(b) > MaxManifest {
		return nil, fmt.Errorf("images: manifest of %d bytes, at most %d", len(b), MaxManifest)
	}
	var m Manifest
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("images: manifest: %w", err)
	}
	if dec.More() {
		return nil, errors.New("images: manifest: data after the object")
	}
	if err := m.Check(); err != nil {
		return nil, err
	}
	return &m, nil
}

// Check says what is wrong with a Manifest, if anything.
func (m *Manifest) Check() error {
	if m.V != Version {
		return fmt.Errorf("images: manifest version %d, this peer reads %d", m.V, Version)
	}
	if len(m.Ref) > maxRef {
		return fmt.Errorf("images: manifest ref of %d bytes, at most %d", len(m.Ref), maxRef)
	}
	if m.Config.Size > MaxConfig {
		return fmt.Errorf("images: config of %d bytes, at most %d", m.Config.Size, MaxConfig)
	}
	if err := m.Config.check(); err != nil {
		return fmt.Errorf("images: config: %w", err)
	}
	if len(m.Layers) == 0 || len(m.Layers) > MaxLayers {
		return fmt.Errorf("images: %d layers, want 1 to %d", len(m.Layers), MaxLayers)
	}
	for i, l := range m.Layers {
		if err := l.check(); err != nil {
			return fmt.Errorf("images: layer %d: %w", i, err)
		}
	}
	return nil
}

func (b Blob) check() error {
	if err := checkDigest(b.Digest); err != nil {
		return err
	}
	if b.Size < 0 {
		return fmt.Errorf("size %d", b.Size)
	}
	_, err := ParseCID(b.CID)
	return err
}

func checkDigest(d string) error {
	hx, ok := strings.CutPrefix(d, "sha256:")
	if !ok || len(hx) != 64 || strings.ToLower(hx) != hx {
		return fmt.Errorf("digest %.80q: want sha256: and 64 lowercase hex digits", d)
	}
	if _, err := hex.DecodeString(hx); err != nil {
		return fmt.Errorf("digest %.80q: %w", d, err)
	}
	return nil
}

// ParseCID reads a blob's CID: CIDv1, SHA-256, dag-pb or raw.
func ParseCID(s string) (cid.Cid, error) {
	if len(s) > maxCID {
		return cid.Undef, fmt.Errorf("cid of %d characters, at most %d", len(s), maxCID)
	}
	c, err := cid.Decode(s)
	if err != nil {
		return cid.Undef, fmt.Errorf("cid %.80q: %w", s, err)
	}
	if c.Prefix().MhType != mh.SHA2_256 {
		return cid.Undef, fmt.Errorf("cid %s: not SHA-256", s)
	}
	if t := c.Type(); t != cid.DagProtobuf && t != cid.Raw {
		return cid.Undef, fmt.Errorf("cid %s: codec %#x, want dag-pb or raw", s, t)
	}
	return c, nil
}

// Saved is an image that Export read from `docker save`'s stream: its
// files on disk, each checked against its digest.
type Saved struct {
	Config File
	Layers []File // base first
}

// File is one file of a saved image.
type File struct {
	Path   string // on disk
	Digest string
	Size   int64
}

// Export reads the tar stream that `docker save REF` writes (the
// engine's legacy layout, or the OCI layout with a manifest.json that
// newer engines write), keeps its files in dir (which it makes; the
// caller removes it), and checks the config's digest against its name
// and each layer's SHA-256 against the config's diff_ids. The stream may
// hold at most max bytes of files.
func Export(r io.Reader, dir string, max int64) (*Saved, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("images: %w", err)
	}
	files := map[string]string{} // name in the tar -> path on disk
	links := map[string]string{} // name -> name it links to
	var total int64
	tr := tar.NewReader(r)
	for n := 0; ; n++ {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("images: reading the engine's export: %w", err)
		}
		if n >= maxTarFiles {
			return nil, fmt.Errorf("images: the engine's export has more than %d files", maxTarFiles)
		}
		name, err := cleanName(h.Name)
		if err != nil {
			return nil, err
		}
		switch h.Typeflag {
		case tar.TypeDir:
			continue
		case tar.TypeSymlink:
			target, err := cleanName(path.Join(path.Dir(name), h.Linkname))
			if err != nil {
				return nil, err
			}
			links[name] = target
			continue
		case tar.TypeReg:
		default:
			continue
		}
		if total += h.Size; total > max {
			return nil, fmt.Errorf("images: the image is more than %d bytes", max)
		}
		p := filepath.Join(dir, fmt.Sprintf("f%d", n))
		if err := writeFile(p, tr); err != nil {
			return nil, err
		}
		files[name] = p
	}
	open := func(name string) (string, error) {
		for i := 0; i < 8; i++ {
			if p, ok := files[name]; ok {
				return p, nil
			}
			t, ok := links[name]
			if !ok {
				break
			}
			name = t
		}
		return "", fmt.Errorf("images: the engine's export names %s, which it does not hold", name)
	}
	mp, err := open("manifest.json")
	if err != nil {
		return nil, err
	}
	mb, err := readSmall(mp, MaxManifest)
	if err != nil {
		return nil, err
	}
	var tm saveManifest
	if err := json.Unmarshal(mb, &tm); err != nil {
		return nil, fmt.Errorf("images: the engine's manifest.json: %w", err)
	}
	if len(tm) != 1 {
		return nil, fmt.Errorf("images: the engine's export holds %d images, want 1", len(tm))
	}
	cp, err := open(tm[0].Config)
	if err != nil {
		return nil, err
	}
	cb, err := readSmall(cp, MaxConfig)
	if err != nil {
		return nil, err
	}
	cfg, err := v1.ParseConfigFile(bytes.NewReader(cb))
	if err != nil {
		return nil, fmt.Errorf("images: the image's config: %w", err)
	}
	sum := sha256.Sum256(cb)
	saved := &Saved{Config: File{Path: cp, Digest: "sha256:" + hex.EncodeToString(sum[:]), Size: int64(len(cb))}}
	if !strings.Contains(tm[0].Config, hex.EncodeToString(sum[:])) {
		return nil, fmt.Errorf("%w: the image's config %s hashes to %s", ErrDigest, tm[0].Config, saved.Config.Digest)
	}
	if len(tm[0].Layers) != len(cfg.RootFS.DiffIDs) || len(tm[0].Layers) == 0 || len(tm[0].Layers) > MaxLayers {
		return nil, fmt.Errorf("images: the image has %d layer files and %d diff_ids, want the same, 1 to %d", len(tm[0].Layers), len(cfg.RootFS.DiffIDs), MaxLayers)
	}
	for i, name := range tm[0].Layers {
		p, err := open(name)
		if err != nil {
			return nil, err
		}
		d, size, err := digestFile(p)
		if err != nil {
			return nil, err
		}
		if want := cfg.RootFS.DiffIDs[i].String(); d != want {
			return nil, fmt.Errorf("%w: layer %d (%s) hashes to %s, the config says %s (a compressed layer? the engine exports them uncompressed)", ErrDigest, i, name, d, want)
		}
		saved.Layers = append(saved.Layers, File{Path: p, Digest: d, Size: size})
	}
	return saved, nil
}

func cleanName(name string) (string, error) {
	c := path.Clean(strings.TrimPrefix(name, "./"))
	if len(name) > maxEntryName || c == ".." || strings.HasPrefix(c, "../") || path.IsAbs(c) {
		return "", fmt.Errorf("images: the engine's export holds a file named %.80q outside its folder", name)
	}
	return c, nil
}

func writeFile(p string, r io.Reader) error {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("images: %w", err)
	}
	_, err = io.Copy(f, r)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("images: writing %s: %w", p, err)
	}
	return nil
}

func readSmall(p string, max int64) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, fmt.Errorf("images: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, fmt.Errorf("images: %w", err)
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("images: %s is more than %d bytes", p, max)
	}
	return b, nil
}

func digestFile(p string) (string, int64, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", 0, fmt.Errorf("images: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, fmt.Errorf("images: %w", err)
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), n, nil
}

// saveManifest is the manifest.json of `docker save` and `docker load`.
type saveManifest []struct {
	Config   string
	RepoTags []string
	Layers   []string
}

// Opener opens a blob's bytes (fetched already) for WriteLoad.
type Opener func(Blob) (io.ReadCloser, error)

// WriteLoad writes to w the tar stream `docker load` reads for m, tagged
// tag: the config, each layer once, and last manifest.json. Every blob's
// bytes are checked against its size and digest as they go out; on a
// mismatch it stops with an error wrapping ErrDigest before
// manifest.json is written, so the engine, which reads the whole stream
// before it loads, loads nothing (the caller closes w with the error).
func WriteLoad(w io.Writer, m *Manifest, tag string, open Opener) error {
	tw := tar.NewWriter(w)
	hexOf := func(d string) string { return strings.TrimPrefix(d, "sha256:") }
	put := func(name string, b Blob) error {
		r, err := open(b)
		if err != nil {
			return err
		}
		defer r.Close()
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: b.Size, Typeflag: tar.TypeReg}); err != nil {
			return fmt.Errorf("images: %w", err)
		}
		h := sha256.New()
		n, err := io.Copy(io.MultiWriter(tw, h), io.LimitReader(r, b.Size+1))
		if err != nil && !errors.Is(err, tar.ErrWriteTooLong) {
			return fmt.Errorf("images: %s: %w", b.Digest, err)
		}
		if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); n != b.Size || got != b.Digest {
			return fmt.Errorf("%w: blob %s (cid %s) reassembled to %d bytes with digest %s, its manifest says %d bytes: the image's manifest is wrong; nothing was loaded", ErrDigest, b.Digest, b.CID, n, got, b.Size)
		}
		return nil
	}
	if err := put(hexOf(m.Config.Digest)+".json", m.Config); err != nil {
		return err
	}
	var layers []string
	done := map[string]bool{}
	for _, l := range m.Layers {
		name := hexOf(l.Digest) + "/layer.tar"
		layers = append(layers, name)
		if done[l.Digest] {
			continue
		}
		done[l.Digest] = true
		if err := put(name, l); err != nil {
			return err
		}
	}
	mb, err := json.Marshal(saveManifest{{Config: hexOf(m.Config.Digest) + ".json", RepoTags: []string{tag}, Layers: layers}})
	if err != nil {
		return fmt.Errorf("images: %w", err)
	}
	if err := tw.WriteHeader(&tar.Header{Name: "manifest.json", Mode: 0o644, Size: int64(len(mb)), Typeflag: tar.TypeReg}); err != nil {
		return fmt.Errorf("images: %w", err)
	}
	if _, err := tw.Write(mb); err != nil {
		return fmt.Errorf("images: %w", err)
	}
	return tw.Close()
}
