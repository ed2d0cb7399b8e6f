package content_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	libp2ptls "github.com/libp2p/go-libp2p/p2p/security/tls"

	"github.com/gpumesh/gpumesh/node/content"
)

// peerOn is a real libp2p host on loopback TCP with a content service.
func peerOn(t testing.TB, max int64) (host.Host, *content.Service) {
	t.Helper()
	// The node's own transport (node/host.go): TCP, Noise, yamux.
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableRelay(),
		libp2p.Security(noise.ID, noise.New), libp2p.Muxer(yamux.ID, yamux.DefaultTransport))
	if err != nil {
		t.Fatal(err)
	}
	s, err := content.New(h, content.Config{Dir: filepath.Join(t.TempDir(), "content"), MaxBytes: max, Prefix: "/gpumesh/test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close(); _ = h.Close() })
	return h, s
}

// peerOnTLS is peerOn with TLS 1.3 as the security transport.
func peerOnTLS(t testing.TB, max int64) (host.Host, *content.Service) {
	t.Helper()
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableRelay(),
		libp2p.Security(libp2ptls.ID, libp2ptls.New), libp2p.Muxer(yamux.ID, yamux.DefaultTransport))
	if err != nil {
		t.Fatal(err)
	}
	s, err := content.New(h, content.Config{Dir: filepath.Join(t.TempDir(), "content"), MaxBytes: max, Prefix: "/gpumesh/test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close(); _ = h.Close() })
	return h, s
}

// grant lets h fetch root's blocks from s.
func grant(t testing.TB, s *content.Service, root cid.Cid, h host.Host) {
	t.Helper()
	if err := s.Grant(context.Background(), root, h.ID()); err != nil {
		t.Fatal(err)
	}
}

func connect(t testing.TB, a, b host.Host) {
	t.Helper()
	if err := a.Connect(context.Background(), peer.AddrInfo{ID: b.ID(), Addrs: b.Addrs()}); err != nil {
		t.Fatal(err)
	}
}

// tree makes a folder with a small file, a file of several chunks and a
// subfolder.
func tree(t testing.TB, big int) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "train")
	if err := os.MkdirAll(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	data := make([]byte, big)
	rng := rand.NewChaCha8([32]byte{1})
	_, _ = rng.Read(data)
	for name, b := range map[string][]byte{"train.py": []byte("print('hi')\n"), "sub/data.bin": data} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func sameTree(t *testing.T, want, got string) {
	t.Helper()
	for _, name := range []string{"train.py", "sub/data.bin"} {
		a, err := os.ReadFile(filepath.Join(want, name))
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(got, name))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a, b) {
			t.Fatalf("%s: %d bytes arrived, want the %d sent", name, len(b), len(a))
		}
		info, _ := os.Stat(filepath.Join(got, name))
		if info.Mode().Perm()&0o222 != 0 {
			t.Fatalf("%s: mode %v, want read-only", name, info.Mode())
		}
	}
}

func TestFetchOncePerPeerAndWriteReadOnly(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ha, a := peerOn(t, 0)
	hb, b := peerOn(t, 0)
	connect(t, hb, ha)
	src := tree(t, 3*content.ChunkSize+17)
	var last int64
	root, err := a.Add(ctx, src, 0, func(done, total int64) { last = done })
	if err != nil {
		t.Fatal(err)
	}
	if want := int64(3*content.ChunkSize + 17 + 12); root.Bytes != want || last != want || root.Files != 2 {
		t.Fatalf("added %d bytes in %d files (progress %d), want %d in 2", root.Bytes, root.Files, last, want)
	}
	grant(t, a, root.CID, hb)
	st, release, err := b.Fetch(ctx, root.CID, 0)
	if err != nil {
		t.Fatal(err)
	}
	release()
	if st.FetchedBytes != st.Bytes || st.Bytes < root.Bytes {
		t.Fatalf("first fetch: %+v, want every byte of the %d-byte DAG fetched", st, root.Bytes)
	}
	dst := filepath.Join(t.TempDir(), "in")
	if err := b.WriteTo(ctx, root.CID, dst); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = content.RemoveTree(dst) })
	sameTree(t, src, dst)
	if got := a.Stats().ServedBytes; got < root.Bytes {
		t.Fatalf("a served %d bytes, want at least %d", got, root.Bytes)
	}

	// The same DAG again moves nothing.
	st2, release, err := b.Fetch(ctx, root.CID, 0)
	if err != nil {
		t.Fatal(err)
	}
	release()
	if st2.FetchedBytes != 0 || st2.Bytes != st.Bytes {
		t.Fatalf("second fetch: %+v, want 0 bytes fetched of %d", st2, st.Bytes)
	}
	// Adding the same bytes again names them the same.
	again, err := a.Add(ctx, src, 0, nil)
	if err != nil || again.CID != root.CID {
		t.Fatalf("re-add: %v %v, want %v", again.CID, err, root.CID)
	}
}

func TestFetchOverLimitFails(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ha, a := peerOn(t, 0)
	hb, b := peerOn(t, 0)
	connect(t, hb, ha)
	root, err := a.Add(ctx, tree(t, 4*content.ChunkSize), 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	grant(t, a, root.CID, hb)
	_, _, err = b.Fetch(ctx, root.CID, content.ChunkSize)
	if !errors.Is(err, content.ErrTooBig) {
		t.Fatalf("fetch of %d bytes with a limit of %d: %v, want ErrTooBig", root.Bytes, content.ChunkSize, err)
	}
	if _, err := a.Add(ctx, tree(t, 4*content.ChunkSize), content.ChunkSize, nil); !errors.Is(err, content.ErrTooBig) {
		t.Fatalf("add over the limit: %v, want ErrTooBig", err)
	}
}

func TestAddRefusesSymlinksAndMissingPaths(t *testing.T) {
	_, a := peerOn(t, 0)
	dir := t.TempDir()
	if err := os.Symlink("/etc/passwd", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Add(context.Background(), dir, 0, nil); err == nil || !bytes.Contains([]byte(err.Error()), []byte("symbolic link")) {
		t.Fatalf("add of a folder with a symlink: %v, want an error naming the symbolic link", err)
	}
	if _, err := a.Add(context.Background(), filepath.Join(dir, "nope"), 0, nil); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("add of a missing path: %v, want not exist", err)
	}
}

// A DAG of more blocks than a fetch asks for at once (a folder of 700
// small files in nested folders): every block arrives, and the folder
// written is the one added.
func TestFetchOfMoreBlocksThanAskedAtOnce(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ha, a := peerOn(t, 0)
	hb, b := peerOn(t, 0)
	connect(t, hb, ha)
	src := filepath.Join(t.TempDir(), "many")
	want := map[string]string{}
	for i := range 700 {
		name := filepath.Join(fmt.Sprintf("d%d", i%7), fmt.Sprintf("e%d", i%3), fmt.Sprintf("f%03d", i))
		want[name] = fmt.Sprintf("file %d\n", i)
		if err := os.MkdirAll(filepath.Join(src, filepath.Dir(name)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(src, name), []byte(want[name]), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	root, err := a.Add(ctx, src, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	grant(t, a, root.CID, hb)
	st, release, err := b.Fetch(ctx, root.CID, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	// 700 files, 21 leaf folders, 7 folders and the root.
	if st.Blocks != 700+21+7+1 || st.FetchedBytes != st.Bytes {
		t.Fatalf("fetched %+v, want all of 729 blocks over the network", st)
	}
	dst := filepath.Join(t.TempDir(), "got")
	if err := b.WriteTo(ctx, root.CID, dst); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = content.RemoveTree(dst) })
	for name, data := range want {
		got, err := os.ReadFile(filepath.Join(dst, name))
		if err != nil || string(got) != data {
			t.Fatalf("%s: %q %v, want %q", name, got, err, data)
		}
	}
	// Fetched again, every block is found in the store.
	st2, release2, err := b.Fetch(ctx, root.CID, 0)
	if err != nil {
		t.Fatal(err)
	}
	release2()
	if st2.Blocks != st.Blocks || st2.Bytes != st.Bytes || st2.FetchedBytes != 0 {
		t.Fatalf("second fetch %+v, want %d blocks of %d bytes, none fetched", st2, st.Blocks, st.Bytes)
	}
}

// A peer that answers with wrong bytes for a CID: its blocks never reach
// the store, and the right peer's do.
func TestWrongBytesFromAPeerAreNotUsed(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ha, a := peerOn(t, 0)
	hh, hostile := peerOn(t, 0)
	hb, b := peerOn(t, 0)
	src := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(src, []byte("the honest bytes"), 0o644); err != nil {
		t.Fatal(err)
	}
	root, err := a.Add(ctx, src, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	// The hostile peer holds other bytes under the same CID and serves
	// them over the real exchange.
	bad, err := blocks.NewBlockWithCid([]byte("forged bytes!!!!"), root.CID)
	if err != nil {
		t.Fatal(err)
	}
	if err := hostile.Store().Put(ctx, bad); err != nil {
		t.Fatal(err)
	}
	grant(t, hostile, root.CID, hb)
	grant(t, a, root.CID, hb)
	connect(t, hb, hh)
	short, stop := context.WithTimeout(ctx, 3*time.Second)
	_, _, err = b.Fetch(short, root.CID, 0)
	stop()
	if err == nil {
		t.Fatal("fetch from the hostile peer alone succeeded")
	}
	if served := hostile.Stats().ServedBlocks; served == 0 {
		t.Fatal("the hostile peer was never asked: the test tests nothing")
	}
	if ok, _ := b.Store().Has(ctx, root.CID); ok {
		t.Fatal("forged block stored")
	}
	connect(t, hb, ha)
	if _, release, err := b.Fetch(ctx, root.CID, 0); err != nil {
		t.Fatal(err)
	} else {
		release()
	}
	dst := filepath.Join(t.TempDir(), "f")
	if err := b.WriteTo(ctx, root.CID, dst); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(dst); string(got) != "the honest bytes" {
		t.Fatalf("wrote %q, want the honest bytes", got)
	}
}

func TestStoreEvictsLeastRecentlyUsedButNotPinned(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	s, err := content.OpenStore(dir, 3000)
	if err != nil {
		t.Fatal(err)
	}
	var bs []blocks.Block
	for i := range 4 {
		bs = append(bs, blocks.NewBlock(bytes.Repeat([]byte{byte(i)}, 1000)))
	}
	for _, b := range bs[:3] {
		if err := s.Put(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Get(ctx, bs[0].Cid()); err != nil { // 0 used: 1 is now the oldest
		t.Fatal(err)
	}
	if err := s.Put(ctx, bs[3]); err != nil {
		t.Fatal(err)
	}
	for i, want := range []bool{true, false, true, true} {
		if got, _ := s.Has(ctx, bs[i].Cid()); got != want {
			t.Fatalf("block %d held %v, want %v", i, got, want)
		}
	}
	if s.Used() != 3000 {
		t.Fatalf("used %d, want 3000", s.Used())
	}
	// A reopened store knows what is on disk.
	s2, err := content.OpenStore(dir, 3000)
	if err != nil {
		t.Fatal(err)
	}
	if s2.Used() != 3000 {
		t.Fatalf("reopened: used %d, want 3000", s2.Used())
	}
}

// BenchmarkInputTransfer moves the same 64 MiB file (BULK_BENCH_MIB
// to change it) over loopback in one run, each way into a file on the
// receiver: a plain TCP copy (io.Copy over a net.Conn), a bare libp2p
// stream between two hosts of the node's transport (TCP, Noise, yamux),
// the same over TLS 1.3, and our content transfer (chunking and hashing
// included) over bitswap (Fetch) and over the bulk stream (FetchFrom),
// on Noise and on TLS (and on one stream, not two). It reports each one's throughput as a ratio to
// the TCP copy's, and the CPU each MiB cost this process (both ends are
// in it; on a loaded machine that varies less than the wall time).
func BenchmarkInputTransfer(b *testing.B) {
	size := 64 << 20
	if v, err := strconv.Atoi(os.Getenv("BULK_BENCH_MIB")); err == nil && v > 0 {
		size = v << 20
	}
	data := make([]byte, size)
	rng := rand.NewChaCha8([32]byte{2})
	_, _ = rng.Read(data)
	src := filepath.Join(b.TempDir(), "data.bin")
	if err := os.WriteFile(src, data, 0o644); err != nil {
		b.Fatal(err)
	}
	data = nil
	ctx := context.Background()
	ha, a := peerOn(b, 0)
	root, err := a.Add(ctx, src, 0, nil)
	if err != nil {
		b.Fatal(err)
	}
	ha.SetStreamHandler(copyProto, func(s network.Stream) { sendFile(b, s, src) })
	ht, t := peerOnTLS(b, 0)
	if _, err := t.Add(ctx, src, 0, nil); err != nil {
		b.Fatal(err)
	}
	ht.SetStreamHandler(copyProto, func(s network.Stream) { sendFile(b, s, src) })

	type way struct {
		name      string
		wall, cpu time.Duration
		run       func()
	}
	fetch := func(tls, bulk bool) func() {
		return func() {
			from, fromH, on := a, ha, peerOn
			if tls {
				from, fromH, on = t, ht, peerOnTLS
			}
			h, s := on(b, 0)
			connect(b, h, fromH)
			grant(b, from, root.CID, h)
			var st content.FetchStats
			var release func()
			var err error
			if bulk {
				st, release, err = s.FetchFrom(ctx, root.CID, 0, fromH.ID())
			} else {
				st, release, err = s.Fetch(ctx, root.CID, 0)
			}
			if err != nil {
				b.Fatal(err)
			}
			release()
			if bulk && s.Stats().BulkBytes != st.FetchedBytes || st.FetchedBytes < int64(size) {
				b.Fatalf("fetch %+v, %d bytes on the bulk stream: want all %d fetched (bulk: %v)", st, s.Stats().BulkBytes, size, bulk)
			}
		}
	}
	stream := func(tls bool) func() {
		return func() {
			to, on := ha, peerOn
			if tls {
				to, on = ht, peerOnTLS
			}
			h, _ := on(b, 0)
			connect(b, h, to)
			streamCopy(b, h, to.ID())
		}
	}
	ways := []*way{
		{name: "tcp", run: func() { tcpCopy(b, src) }},
		{name: "stream", run: stream(false)},
		{name: "stream-tls", run: stream(true)},
		{name: "bitswap", run: fetch(false, false)},
		{name: "bulk", run: fetch(false, true)},
		{name: "bulk-tls", run: fetch(true, true)},
		{name: "bulk-1-stream", run: func() { defer content.SetBulkLanes(1)(); fetch(false, true)() }},
	}
	for i := 0; i < b.N; i++ {
		for _, w := range ways {
			start, cpu := time.Now(), cpuTime()
			pprof.Do(ctx, pprof.Labels("way", w.name), func(context.Context) { w.run() })
			w.wall += time.Since(start)
			w.cpu += cpuTime() - cpu
		}
	}
	mbs := func(d time.Duration) float64 { return float64(size) * float64(b.N) / d.Seconds() / (1 << 20) }
	tcp := mbs(ways[0].wall)
	b.ReportMetric(tcp, "tcp-MiB/s")
	for _, w := range ways {
		b.ReportMetric(float64(w.cpu.Microseconds())/1e3/float64(b.N)/float64(size>>20), w.name+"-cpu-ms/MiB")
		if w.name != "tcp" {
			b.ReportMetric(mbs(w.wall)/tcp, w.name+"/tcp")
		}
	}
	b.ReportMetric(mbs(ways[4].wall)/mbs(ways[1].wall), "bulk/stream")
	b.ReportMetric(mbs(ways[5].wall)/mbs(ways[2].wall), "bulk-tls/stream-tls")
}

const copyProto = "/gpumesh/test/copy/1"

// cpuTime is the user and system CPU time this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func sendFile(b *testing.B, s network.Stream, path string) {
	defer s.Close()
	f, err := os.Open(path)
	if err != nil {
		b.Error(err)
		return
	}
	defer f.Close()
	if _, err := io.Copy(s, f); err != nil {
		b.Error(err)
	}
}

// streamCopy receives into a file what the peer to sends on one libp2p
// stream (copyProto).
func streamCopy(b *testing.B, h host.Host, to peer.ID) {
	s, err := h.NewStream(context.Background(), to, copyProto)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	out, err := os.Create(filepath.Join(b.TempDir(), "stream-copy"))
	if err != nil {
		b.Fatal(err)
	}
	defer out.Close()
	if _, err := io.Copy(out, s); err != nil {
		b.Fatal(err)
	}
}

// tcpCopy sends the file at path over a loopback TCP connection into a
// file, as a plain copy would.
func tcpCopy(b *testing.B, path string) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		f, err := os.Open(path)
		if err != nil {
			done <- err
			return
		}
		defer f.Close()
		_, err = io.Copy(c, f)
		done <- err
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	out, err := os.Create(filepath.Join(b.TempDir(), "copy"))
	if err != nil {
		b.Fatal(err)
	}
	if _, err := io.Copy(out, c); err != nil {
		b.Fatal(err)
	}
	_ = out.Close()
	_ = c.Close()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
}

// A block goes only to a peer granted a root that holds it: a stranger
// asking over the real exchange, of the peer that added the root and of
// one that fetched it, gets nothing, while the peer granted fetches it;
// a grant revoked serves no more.
func TestBlocksGoOnlyToPeersGranted(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ha, a := peerOn(t, 0)
	hb, b := peerOn(t, 0)
	root, err := a.Add(ctx, tree(t, 2*content.ChunkSize), 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	connect(t, hb, ha)
	grant(t, a, root.CID, hb)
	if _, release, err := b.Fetch(ctx, root.CID, 0); err != nil {
		t.Fatalf("the peer granted: %v", err)
	} else {
		release()
	}
	// Each phase asks with a peer of its own: a peer told DONT_HAVE keeps
	// its want outstanding for a while, and would not ask again at once.
	fetchFails := func(why string, hs host.Host, s *content.Service) {
		t.Helper()
		connect(t, hs, ha)
		connect(t, hs, hb)
		served := a.Stats().ServedBlocks
		short, stop := context.WithTimeout(ctx, 3*time.Second)
		defer stop()
		if _, _, err := s.Fetch(short, root.CID, 0); err == nil {
			t.Fatalf("%s: the stranger fetched the root", why)
		}
		if got := a.Stats().ServedBlocks; got != served {
			t.Fatalf("%s: %d blocks served to the stranger", why, got-served)
		}
		if got := b.Stats().ServedBlocks; got != 0 {
			t.Fatalf("%s: the peer that fetched the root served %d blocks of it", why, got)
		}
		if ok, _ := s.Store().Has(ctx, root.CID); ok {
			t.Fatalf("%s: the stranger holds the root", why)
		}
	}
	hs, stranger := peerOn(t, 0)
	fetchFails("not granted", hs, stranger)

	// Granted twice and revoked twice: not granted.
	hc, c := peerOn(t, 0)
	grant(t, a, root.CID, hc)
	grant(t, a, root.CID, hc)
	a.Revoke(root.CID, hc.ID())
	a.Revoke(root.CID, hc.ID())
	fetchFails("revoked", hc, c)

	// Granted twice and revoked once: granted, a peer connected as the
	// others were gets it.
	hd, d := peerOn(t, 0)
	connect(t, hd, ha)
	connect(t, hd, hb)
	grant(t, a, root.CID, hd)
	grant(t, a, root.CID, hd)
	a.Revoke(root.CID, hd.ID())
	if _, release, err := d.Fetch(ctx, root.CID, 0); err != nil {
		t.Fatalf("granted: %v", err)
	} else {
		release()
	}

	// A root not whole in the store cannot be granted.
	other, err := stranger.Add(ctx, tree(t, 10), 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Grant(ctx, other.CID, hd.ID()); err == nil || !strings.Contains(err.Error(), "not in this peer's store") {
		t.Fatalf("grant of a root a lacks: %v, want an error that says so", err)
	}
}
