package images_test

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
	"path/filepath"
	"strings"
	"testing"

	"github.com/ipfs/go-cid"
	mh "github.com/multiformats/go-multihash"

	"github.com/gpumesh/gpumesh/node/images"
)

func digest(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

func cidOf(b []byte) string {
	h, _ := mh.Sum(b, mh.SHA2_256, -1)
	return cid.NewCidV1(cid.Raw, h).String()
}

// layerTar is a layer: a tar of one file.
func layerTar(t testing.TB, name, body string) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	_, _ = tw.Write([]byte(body))
	_ = tw.Close()
	return buf.Bytes()
}

type entry struct {
	name, link string
	body       []byte
}

func tarOf(t testing.TB, entries []entry) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Mode: 0o644, Size: int64(len(e.body)), Typeflag: tar.TypeReg}
		if e.link != "" {
			h = &tar.Header{Name: e.name, Linkname: e.link, Typeflag: tar.TypeSymlink}
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		_, _ = tw.Write(e.body)
	}
	_ = tw.Close()
	return buf.Bytes()
}

// saved is what `docker save` writes of an image of layers: the legacy
// layout, the second layer a symlink to the first's file where dup.
func saved(t testing.TB, layers [][]byte, dup bool) ([]byte, []byte) {
	var diffs []string
	for _, l := range layers {
		diffs = append(diffs, digest(l))
	}
	cfg, _ := json.Marshal(map[string]any{"architecture": "amd64", "os": "linux", "rootfs": map[string]any{"type": "layers", "diff_ids": diffs}})
	cfgName := strings.TrimPrefix(digest(cfg), "sha256:") + ".json"
	var names []string
	var es []entry
	for i, l := range layers {
		n := fmt.Sprintf("l%d/layer.tar", i)
		names = append(names, n)
		if dup && i == 1 {
			es = append(es, entry{name: n, link: "../l0/layer.tar"})
			continue
		}
		es = append(es, entry{name: n, body: l})
	}
	man, _ := json.Marshal([]map[string]any{{"Config": cfgName, "RepoTags": []string{"x:y"}, "Layers": names}})
	es = append(es, entry{name: cfgName, body: cfg}, entry{name: "manifest.json", body: man})
	return tarOf(t, es), cfg
}

func TestExportChecksAndWriteLoadPutsBack(t *testing.T) {
	l0, l1 := layerTar(t, "a", "alpha"), layerTar(t, "b", strings.Repeat("beta", 1000))
	stream, cfg := saved(t, [][]byte{l0, l1, l0}, false)
	s, err := images.Export(bytes.NewReader(stream), filepath.Join(t.TempDir(), "x"), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if s.Config.Digest != digest(cfg) || len(s.Layers) != 3 || s.Layers[1].Digest != digest(l1) || s.Layers[2].Size != int64(len(l0)) {
		t.Fatalf("saved %+v", s)
	}
	bytesOf := map[string][]byte{digest(cfg): cfg, digest(l0): l0, digest(l1): l1}
	m := &images.Manifest{V: images.Version, Ref: "x:y", Config: images.Blob{Digest: digest(cfg), Size: int64(len(cfg)), CID: cidOf(cfg)}}
	for _, l := range [][]byte{l0, l1, l0} {
		m.Layers = append(m.Layers, images.Blob{Digest: digest(l), Size: int64(len(l)), CID: cidOf(l)})
	}
	if got, want := m.Bytes(), int64(len(cfg)+len(l0)+len(l1)); got != want {
		t.Errorf("Bytes %d, want %d (a layer twice counts once)", got, want)
	}
	enc, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	back, err := images.Decode(enc)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	err = images.WriteLoad(&out, back, back.Tag(), func(b images.Blob) (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(bytesOf[b.Digest])), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// What docker load reads: the blobs, then manifest.json last.
	tr := tar.NewReader(&out)
	var names []string
	files := map[string][]byte{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		names = append(names, h.Name)
		files[h.Name] = b
	}
	if len(names) != 4 || names[3] != "manifest.json" {
		t.Fatalf("entries %v: want config, 2 layers, manifest.json last", names)
	}
	var lm []struct {
		Config   string
		RepoTags []string
		Layers   []string
	}
	if err := json.Unmarshal(files["manifest.json"], &lm); err != nil || len(lm) != 1 || len(lm[0].Layers) != 3 || lm[0].RepoTags[0] != m.Tag() {
		t.Fatalf("manifest.json %s (%v)", files["manifest.json"], err)
	}
	if !bytes.Equal(files[lm[0].Layers[1]], l1) || !bytes.Equal(files[lm[0].Config], cfg) {
		t.Errorf("layer or config bytes differ")
	}
	if !strings.HasPrefix(m.Tag(), "gpumesh-image:") || m.ID() != digest(cfg) {
		t.Errorf("tag %s, ID %s", m.Tag(), m.ID())
	}
}

func TestExportFollowsLinksBetweenLayerFiles(t *testing.T) {
	l0 := layerTar(t, "a", "alpha")
	stream, _ := saved(t, [][]byte{l0, l0}, true)
	s, err := images.Export(bytes.NewReader(stream), filepath.Join(t.TempDir(), "x"), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Layers) != 2 || s.Layers[1].Digest != digest(l0) {
		t.Fatalf("layers %+v", s.Layers)
	}
}

func TestExportRefuses(t *testing.T) {
	l0 := layerTar(t, "a", "alpha")
	good, cfg := saved(t, [][]byte{l0}, false)
	cfgName := strings.TrimPrefix(digest(cfg), "sha256:") + ".json"
	man, _ := json.Marshal([]map[string]any{{"Config": cfgName, "Layers": []string{"l0/layer.tar"}}})
	for _, tc := range []struct {
		name   string
		stream []byte
		max    int64
		want   string
	}{
		{"over the size", good, 100, "more than 100 bytes"},
		{"outside its folder", tarOf(t, []entry{{name: "../evil", body: []byte("x")}}), 1 << 20, "outside its folder"},
		{"no manifest", tarOf(t, []entry{{name: "a", body: []byte("x")}}), 1 << 20, "manifest.json"},
		{"a layer not its diff_id", tarOf(t, []entry{{name: "l0/layer.tar", body: []byte("not the layer")}, {name: cfgName, body: cfg}, {name: "manifest.json", body: man}}), 1 << 20, "hashes to"},
		{"a config not its name", tarOf(t, []entry{{name: "l0/layer.tar", body: l0}, {name: cfgName, body: append(cfg, ' ')}, {name: "manifest.json", body: man}}), 1 << 20, "config"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := images.Export(bytes.NewReader(tc.stream), filepath.Join(t.TempDir(), "x"), tc.max)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error with %q", err, tc.want)
			}
		})
	}
}

// A blob whose bytes are not its digest stops the stream before
// manifest.json: the engine loads nothing.
func TestWriteLoadStopsAtADigestMismatch(t *testing.T) {
	cfg, l0 := []byte(`{"rootfs":{}}`), layerTar(t, "a", "alpha")
	m := &images.Manifest{V: images.Version, Ref: "x", Config: images.Blob{Digest: digest(cfg), Size: int64(len(cfg)), CID: cidOf(cfg)},
		Layers: []images.Blob{{Digest: digest(l0), Size: int64(len(l0)), CID: cidOf(l0)}}}
	var out bytes.Buffer
	err := images.WriteLoad(&out, m, m.Tag(), func(b images.Blob) (io.ReadCloser, error) {
		if b.Digest == m.Config.Digest {
			return io.NopCloser(bytes.NewReader(cfg)), nil
		}
		bad := bytes.Clone(l0)
		bad[600] ^= 1
		return io.NopCloser(bytes.NewReader(bad)), nil
	})
	if !errors.Is(err, images.ErrDigest) {
		t.Fatalf("got %v, want ErrDigest", err)
	}
	if bytes.Contains(out.Bytes(), []byte("manifest.json")) {
		t.Fatal("manifest.json was written after a mismatch")
	}
}

func TestDecodeRefuses(t *testing.T) {
	c := cidOf([]byte("x"))
	d := digest([]byte("x"))
	ok := fmt.Sprintf(`{"v":1,"ref":"r","config":{"digest":%q,"size":1,"cid":%q},"layers":[{"digest":%q,"size":1,"cid":%q}]}`, d, c, d, c)
	if _, err := images.Decode([]byte(ok)); err != nil {
		t.Fatalf("a good manifest: %v", err)
	}
	for name, b := range map[string]string{
		"version":        strings.Replace(ok, `"v":1`, `"v":2`, 1),
		"no layers":      fmt.Sprintf(`{"v":1,"ref":"r","config":{"digest":%q,"size":1,"cid":%q},"layers":[]}`, d, c),
		"bad digest":     strings.Replace(ok, d, "sha256:XYZ", 1),
		"md5 cid":        strings.Replace(ok, c, "bafkreibogus", 1),
		"unknown field":  strings.Replace(ok, `"v":1`, `"v":1,"x":2`, 1),
		"negative size":  strings.Replace(ok, `"size":1`, `"size":-1`, 1),
		"trailing data":  ok + "{}",
		"huge":           `{"v":1,"ref":"` + strings.Repeat("a", images.MaxManifest) + `"}`,
		"upper-case hex": strings.Replace(ok, d, strings.ToUpper(d), 1),
	} {
		if _, err := images.Decode([]byte(b)); err == nil {
			t.Errorf("%s: decoded", name)
		}
	}
}

func FuzzDecode(f *testing.F) {
	c := cidOf([]byte("x"))
	d := digest([]byte("x"))
	f.Add([]byte(fmt.Sprintf(`{"v":1,"ref":"r","config":{"digest":%q,"size":1,"cid":%q},"layers":[{"digest":%q,"size":1,"cid":%q}]}`, d, c, d, c)))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := images.Decode(b)
		if err != nil {
			return
		}
		// What decodes encodes, and decodes the same again.
		enc, err := m.Encode()
		if err != nil {
			t.Fatalf("a decoded manifest does not encode: %v", err)
		}
		m2, err := images.Decode(enc)
		if err != nil || m2.Bytes() != m.Bytes() || len(m2.Blobs()) != len(m.Blobs()) {
			t.Fatalf("round trip: %v", err)
		}
	})
}

func FuzzExport(f *testing.F) {
	l0 := layerTar(f, "a", "alpha")
	good, _ := saved(f, [][]byte{l0, l0}, true)
	f.Add(good)
	base := f.TempDir()
	f.Fuzz(func(t *testing.T, b []byte) {
		dir := filepath.Join(base, "x")
		defer os.RemoveAll(dir)
		s, err := images.Export(bytes.NewReader(b), dir, 1<<20)
		if err != nil {
			return
		}
		for _, l := range s.Layers {
			if !strings.HasPrefix(l.Path, dir) {
				t.Fatalf("a layer outside the folder: %s", l.Path)
			}
		}
	})
}
