package content_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"io"
	"os"
	"path/filepath"
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

	"github.com/gpumesh/gpumesh/internal/testwait"
	"github.com/gpumesh/gpumesh/node/content"
)

var bulkProto = content.BulkProtocol("/gpumesh/test")

// bareHost is a libp2p host with no content service: a stranger that
// speaks the bulk protocol by hand.
func bareHost(t *testing.T) host.Host {
	t.Helper()
	h, err := libp2p.New(libp2p.ListenAddrStrings("/ip4/127.0.0.1/tcp/0"), libp2p.DisableRelay(),
		libp2p.Security(noise.ID, noise.New), libp2p.Muxer(yamux.ID, yamux.DefaultTransport))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Close() })
	return h
}

// wants encodes one bulk request by hand.
func wants(cs ...cid.Cid) []byte {
	b := binary.AppendUvarint(nil, uint64(len(cs)))
	for _, c := range cs {
		b = binary.AppendUvarint(b, uint64(len(c.Bytes())))
		b = append(b, c.Bytes()...)
	}
	return b
}

// ask sends one request for c on a fresh bulk stream from h to p and
// reads the answer: the block's bytes, or nil for none.
func ask(t *testing.T, h host.Host, p peer.ID, req []byte) ([]byte, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := h.NewStream(ctx, p, bulkProto)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Reset()
	_ = s.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := s.Write(req); err != nil {
		return nil, err
	}
	r := bufio.NewReader(s)
	tag, err := binary.ReadUvarint(r)
	if err != nil {
		return nil, err
	}
	if tag == 0 {
		return nil, nil
	}
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return nil, err
	}
	data := make([]byte, n)
	_, err = io.ReadFull(r, data)
	return data, err
}

func TestBulkFetchTakesOneStreamFromTheHolder(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ha, a := peerOn(t, 0)
	hb, b := peerOn(t, 0)
	connect(t, hb, ha)
	src := tree(t, 5*content.ChunkSize+3)
	root, err := a.Add(ctx, src, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	grant(t, a, root.CID, hb)
	st, release, err := b.FetchFrom(ctx, root.CID, 0, ha.ID())
	if err != nil {
		t.Fatal(err)
	}
	release()
	if st.FetchedBytes != st.Bytes || st.Bytes < root.Bytes {
		t.Fatalf("fetch: %+v, want every byte of the %d-byte DAG fetched", st, root.Bytes)
	}
	if got := b.Stats().BulkBytes; got != st.FetchedBytes {
		t.Fatalf("%d bytes came on the bulk stream, want all %d", got, st.FetchedBytes)
	}
	if got := b.Received(ha.ID()); got != uint64(st.FetchedBytes) {
		t.Fatalf("received %d bytes from a, want the %d fetched", got, st.FetchedBytes)
	}
	if got := a.Stats().ServedBytes; got != st.Bytes {
		t.Fatalf("a served %d bytes, want the %d fetched", got, st.Bytes)
	}
	dst := filepath.Join(t.TempDir(), "in")
	if err := b.WriteTo(ctx, root.CID, dst); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = content.RemoveTree(dst) })
	sameTree(t, src, dst)
	// Again: the store has it all, nothing moves.
	st2, release, err := b.FetchFrom(ctx, root.CID, 0, ha.ID())
	if err != nil {
		t.Fatal(err)
	}
	release()
	if st2.FetchedBytes != 0 || st2.Bytes != st.Bytes {
		t.Fatalf("second fetch: %+v, want 0 bytes fetched of %d", st2, st.Bytes)
	}
	// Over the limit: refused, as Fetch refuses it.
	_, hc := func() (host.Host, *content.Service) {
		h, s := peerOn(t, 0)
		connect(t, h, ha)
		grant(t, a, root.CID, h)
		return h, s
	}()
	if _, _, err := hc.FetchFrom(ctx, root.CID, content.ChunkSize, ha.ID()); err == nil {
		t.Fatal("a fetch over its limit succeeded")
	}
}

func TestBulkStrangerGetsNothing(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ha, a := peerOn(t, 0)
	src := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(src, []byte("for granted peers only"), 0o644); err != nil {
		t.Fatal(err)
	}
	root, err := a.Add(ctx, src, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	friend, stranger := bareHost(t), bareHost(t)
	for _, h := range []host.Host{friend, stranger} {
		connect(t, h, ha)
	}
	grant(t, a, root.CID, friend)
	got, err := ask(t, stranger, ha.ID(), wants(root.CID))
	if err != nil || got != nil {
		t.Fatalf("stranger got %q, %v; want none", got, err)
	}
	got, err = ask(t, friend, ha.ID(), wants(root.CID))
	if err != nil || got == nil {
		t.Fatalf("granted peer got %q, %v; want the block", got, err)
	}
	if _, err := cid.Prefix(root.CID.Prefix()).Sum(got); err != nil {
		t.Fatal(err)
	}
	// A request of more CIDs than a batch is refused: the stream is reset.
	big := binary.AppendUvarint(nil, 1000)
	if got, err := ask(t, friend, ha.ID(), big); err == nil {
		t.Fatalf("a request of 1000 CIDs got %q, want the stream reset", got)
	}
	// A stranger's FetchFrom gets nothing and stores nothing.
	hs, s := peerOn(t, 0)
	connect(t, hs, ha)
	short, stop := context.WithTimeout(ctx, 2*time.Second)
	defer stop()
	if _, _, err := s.FetchFrom(short, root.CID, 0, ha.ID()); err == nil {
		t.Fatal("a stranger fetched a root not granted to it")
	}
	if ok, _ := s.Store().Has(ctx, root.CID); ok {
		t.Fatal("the stranger stored the block")
	}
	if served := a.Stats().ServedBlocks; served != 1 {
		t.Fatalf("a served %d blocks, want 1 (the granted peer's)", served)
	}
}

func TestBulkForgerIsCutOffAndFetchCompletesFromAnother(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ha, a := peerOn(t, 0)
	hh, hostile := peerOn(t, 0)
	hb, b := peerOn(t, 0)
	src := tree(t, 4*content.ChunkSize)
	root, err := a.Add(ctx, src, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	// The hostile peer has the DAG, then swaps a leaf for other bytes
	// under its CID, and serves it on the real protocol.
	connect(t, hh, ha)
	grant(t, a, root.CID, hh)
	if _, rel, err := hostile.FetchFrom(ctx, root.CID, 0, ha.ID()); err != nil {
		t.Fatal(err)
	} else {
		rel()
	}
	leaf := aLeaf(t, ctx, hostile, root.CID)
	if err := hostile.Store().DeleteBlock(ctx, leaf); err != nil {
		t.Fatal(err)
	}
	forged, _ := blocks.NewBlockWithCid(make([]byte, content.ChunkSize), leaf)
	if err := hostile.Store().Put(ctx, forged); err != nil {
		t.Fatal(err)
	}
	grant(t, hostile, root.CID, hb)
	grant(t, a, root.CID, hb)
	connect(t, hb, hh)
	connect(t, hb, ha)
	st, release, err := b.FetchFrom(ctx, root.CID, 0, hh.ID(), ha.ID())
	if err != nil {
		t.Fatal(err)
	}
	release()
	if b.ForgersCut() != 1 {
		t.Fatalf("%d peers cut off, want the forger", b.ForgersCut())
	}
	testwait.For(t, 10*time.Second, "the forger disconnected", func() bool { return hb.Network().Connectedness(hh.ID()) != network.Connected })
	if hostile.Stats().ServedBlocks == 0 || a.Stats().ServedBlocks == 0 {
		t.Fatal("one of the two peers was never asked: the test tests nothing")
	}
	if st.Bytes < root.Bytes {
		t.Fatalf("fetch %+v, want the whole DAG", st)
	}
	dst := filepath.Join(t.TempDir(), "in")
	if err := b.WriteTo(ctx, root.CID, dst); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = content.RemoveTree(dst) })
	sameTree(t, src, dst)
}

func TestBulkOversizeFrameIsRefused(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ha, a := peerOn(t, 0)
	hb, b := peerOn(t, 0)
	src := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(src, []byte("small"), 0o644); err != nil {
		t.Fatal(err)
	}
	root, err := a.Add(ctx, src, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	grant(t, a, root.CID, hb)
	// A hostile peer answers every request with a frame over MaxBlock,
	// and would send its bytes forever.
	hostile := bareHost(t)
	sent := make(chan struct{}, 1)
	hostile.SetStreamHandler(bulkProto, func(s network.Stream) {
		defer s.Reset()
		hdr := binary.AppendUvarint([]byte{1}, content.MaxBlock+1)
		_, _ = s.Write(hdr)
		select {
		case sent <- struct{}{}:
		default:
		}
		junk := make([]byte, 64<<10)
		for range 1 << 10 {
			if _, err := s.Write(junk); err != nil {
				return
			}
		}
	})
	connect(t, hb, hostile)
	connect(t, hb, ha)
	if _, release, err := b.FetchFrom(ctx, root.CID, 0, hostile.ID(), ha.ID()); err != nil {
		t.Fatal(err)
	} else {
		release()
	}
	select {
	case <-sent:
	default:
		t.Fatal("the hostile peer was never asked: the test tests nothing")
	}
	if b.ForgersCut() != 1 {
		t.Fatalf("%d peers cut off, want the one that sent an oversize frame", b.ForgersCut())
	}
	if got := b.Stats().FetchedBytes; got != 5 {
		t.Fatalf("fetched %d bytes, want the 5 of the honest block", got)
	}
}

// aLeaf is a raw leaf of root's DAG in s's store.
func aLeaf(t *testing.T, ctx context.Context, s *content.Service, root cid.Cid) cid.Cid {
	t.Helper()
	ch, err := s.Store().AllKeysChan(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for c := range ch {
		b, err := s.Store().Get(ctx, c)
		if err == nil && len(b.RawData()) == content.ChunkSize {
			return cid.NewCidV1(cid.Raw, c.Hash())
		}
	}
	t.Fatal("no leaf of a whole chunk in the store")
	return cid.Undef
}

// A peer may hold only a few bulk streams open here at once: the next is
// reset, and one closed makes room.
func TestBulkStreamsAPeerHoldsAreBounded(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ha, a := peerOn(t, 0)
	src := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(src, []byte("bounded"), 0o644); err != nil {
		t.Fatal(err)
	}
	root, err := a.Add(ctx, src, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	h := bareHost(t)
	connect(t, h, ha)
	grant(t, a, root.CID, h)
	// open asks for the root on a new stream and reads the answer; the
	// stream stays open.
	open := func() (network.Stream, error) {
		s, err := h.NewStream(ctx, ha.ID(), bulkProto)
		if err != nil {
			return nil, err
		}
		_ = s.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := s.Write(wants(root.CID)); err != nil {
			s.Reset()
			return nil, err
		}
		r := bufio.NewReader(s)
		if tag, err := binary.ReadUvarint(r); err != nil || tag != 1 {
			s.Reset()
			if err == nil {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
		n, _ := binary.ReadUvarint(r)
		if _, err := io.ReadFull(r, make([]byte, n)); err != nil {
			s.Reset()
			return nil, err
		}
		return s, nil
	}
	var held []network.Stream
	for i := range content.BulkPerPeer {
		s, err := open()
		if err != nil {
			t.Fatalf("stream %d: %v, want it served", i+1, err)
		}
		held = append(held, s)
	}
	if s, err := open(); err == nil {
		s.Reset()
		t.Fatalf("stream %d at once was served, want it reset", content.BulkPerPeer+1)
	}
	// One ends (the server closes its side once it has left): room for
	// one more.
	_ = held[0].CloseWrite()
	if _, err := io.ReadAll(held[0]); err != nil {
		t.Fatal(err)
	}
	s, err := open()
	if err != nil {
		t.Fatalf("a stream after one closed: %v, want it served", err)
	}
	held = append(held[1:], s)
	for _, s := range held {
		s.Reset()
	}
}
