package content

import (
	"container/list"
	"context"
	"encoding/base32"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	blocks "github.com/ipfs/go-block-format"
	"github.com/ipfs/go-cid"
	ipld "github.com/ipfs/go-ipld-format"
	mh "github.com/multiformats/go-multihash"
	"golang.org/x/sys/unix"

	"github.com/ipfs/boxo/blockstore"
)

// Store is a blockstore on disk: one file a block, named by its multihash,
// capped in bytes. When a Put would take it over its cap, the blocks used
// least recently go first (a block used is one read or written); blocks
// of a pinned root's DAG (Pin) stay while it is pinned. Files are written
// to a temporary name and renamed, so a crash leaves no torn block under
// a block's name.
type Store struct {
	dir string
	max int64

	mu    sync.Mutex               // guards the fields below
	used  int64                    // bytes of the blocks held
	index map[string]*list.Element // multihash (binary, as a string) -> its entry in lru
	lru   *list.List               // *entry, most recently used first
	pins  map[string]int           // multihash -> pins holding it

	dirs sync.Map // a block folder made: its path -> true (made once, not once a block)
}

type entry struct {
	key  string
	size int64
}

var _ blockstore.Blockstore = (*Store)(nil)

// ErrTooBig marks a block or a DAG larger than a store's cap or a fetch's
// limit.
var ErrTooBig = errors.New("content: over the size limit")

var b32 = base32.StdEncoding.WithPadding(base32.NoPadding)

// OpenStore opens (making it if missing) the store in dir, capped at max
// bytes, and reads what an earlier run left there, oldest files first in
// the LRU order.
func OpenStore(dir string, max int64) (*Store, error) {
	if max <= 0 {
		return nil, fmt.Errorf("content: store cap %d bytes: want more than 0", max)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("content: store %s: %w", dir, err)
	}
	s := &Store{dir: dir, max: max, index: map[string]*list.Element{}, lru: list.New(), pins: map[string]int{}}
	type found struct {
		key  string
		size int64
		mod  time.Time
	}
	var all []found
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		name := d.Name()
		if filepath.Ext(name) == ".tmp" {
			_ = os.Remove(path) // a write a crash cut short
			return nil
		}
		raw, err := b32.DecodeString(name)
		if err != nil {
			return nil // not a block of ours
		}
		info, err := d.Info()
		if err != nil {
			return nil
		}
		all = append(all, found{string(raw), info.Size(), info.ModTime()})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("content: store %s: %w", dir, err)
	}
	sort.Slice(all, func(i, j int) bool { return all[i].mod.After(all[j].mod) })
	for _, f := range all {
		s.index[f.key] = s.lru.PushBack(&entry{key: f.key, size: f.size})
		s.used += f.size
	}
	s.mu.Lock()
	s.evictLocked()
	s.mu.Unlock()
	return s, nil
}

// Used is the bytes of the blocks held.
func (s *Store) Used() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.used
}

func (s *Store) path(key string) string {
	name := b32.EncodeToString([]byte(key))
	return filepath.Join(s.dir, name[len(name)-2:], name)
}

func keyOf(c cid.Cid) string { return string(c.Hash()) }

// touch marks key used now; it reports whether the store holds it.
func (s *Store) touch(key string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.index[key]
	if ok {
		s.lru.MoveToFront(e)
	}
	return ok
}

// Has reports whether the store holds c's block.
func (s *Store) Has(_ context.Context, c cid.Cid) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.index[keyOf(c)]
	return ok, nil
}

// Get reads c's block.
func (s *Store) Get(_ context.Context, c cid.Cid) (blocks.Block, error) {
	key := keyOf(c)
	if !s.touch(key) {
		return nil, ipld.ErrNotFound{Cid: c}
	}
	data, err := os.ReadFile(s.path(key))
	if errors.Is(err, fs.ErrNotExist) {
		s.forget(key)
		return nil, ipld.ErrNotFound{Cid: c}
	}
	if err != nil {
		return nil, fmt.Errorf("content: read block %s: %w", c, err)
	}
	return blocks.NewBlockWithCid(data, c)
}

// readInto reads c's block into buf's storage where it fits (a server
// that sends block after block reuses one buffer): its bytes, or
// ipld.ErrNotFound. A block over MaxBlock is not read.
func (s *Store) readInto(c cid.Cid, buf []byte) ([]byte, error) {
	key := keyOf(c)
	if !s.touch(key) {
		return nil, ipld.ErrNotFound{Cid: c}
	}
	f, err := os.Open(s.path(key))
	if errors.Is(err, fs.ErrNotExist) {
		s.forget(key)
		return nil, ipld.ErrNotFound{Cid: c}
	}
	if err != nil {
		return nil, fmt.Errorf("content: read block %s: %w", c, err)
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("content: read block %s: %w", c, err)
	}
	n := info.Size()
	if n > MaxBlock {
		return nil, fmt.Errorf("%w: block %s is %d bytes", ErrTooBig, c, n)
	}
	if int64(cap(buf)) < n {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(f, buf); err != nil {
		return nil, fmt.Errorf("content: read block %s: %w", c, err)
	}
	return buf, nil
}

// GetSize is the size of c's block.
func (s *Store) GetSize(_ context.Context, c cid.Cid) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.index[keyOf(c)]
	if !ok {
		return -1, ipld.ErrNotFound{Cid: c}
	}
	return int(e.Value.(*entry).size), nil
}

// Put keeps b. The caller has checked that b's bytes hash to its CID (the
// block exchange checks every block it receives).
func (s *Store) Put(_ context.Context, b blocks.Block) error {
	key := keyOf(b.Cid())
	data := b.RawData()
	if int64(len(data)) > s.max {
		return fmt.Errorf("%w: a block of %d bytes in a store of %d", ErrTooBig, len(data), s.max)
	}
	if s.touch(key) {
		return nil
	}
	path := s.path(key)
	dir := filepath.Dir(path)
	if _, ok := s.dirs.Load(dir); !ok {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("content: write block: %w", err)
		}
		s.dirs.Store(dir, true)
	}
	tmp, err := os.CreateTemp(dir, "*.tmp")
	if err != nil {
		return fmt.Errorf("content: write block: %w", err)
	}
	_, err = tmp.Write(data)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		_ = os.Remove(tmp.Name())
		return fmt.Errorf("content: write block %s: %w", b.Cid(), err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.index[key]; !ok {
		s.index[key] = s.lru.PushFront(&entry{key: key, size: int64(len(data))})
		s.used += int64(len(data))
	}
	s.evictLocked()
	return nil
}

// Sync makes every block written so far durable: blocks are written and
// renamed into place without waiting for the disk, as most are fetched
// again if lost, and one syncfs of the store's filesystem before a record
// points at them (a job's checkpoint, a replica kept for another peer)
// costs less than a sync per block.
func (s *Store) Sync() error {
	f, err := os.Open(s.dir)
	if err != nil {
		return fmt.Errorf("content: sync the store: %w", err)
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("content: sync the store %s: %w", s.dir, err)
	}
	return nil
}

// PutMany keeps every block of bs.
func (s *Store) PutMany(ctx context.Context, bs []blocks.Block) error {
	for _, b := range bs {
		if err := s.Put(ctx, b); err != nil {
			return err
		}
	}
	return nil
}

// DeleteBlock removes c's block.
func (s *Store) DeleteBlock(_ context.Context, c cid.Cid) error {
	key := keyOf(c)
	s.forget(key)
	if err := os.Remove(s.path(key)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("content: delete block %s: %w", c, err)
	}
	return nil
}

func (s *Store) forget(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.index[key]; ok {
		s.lru.Remove(e)
		delete(s.index, key)
		s.used -= e.Value.(*entry).size
	}
}

// AllKeysChan lists every block held, as raw CIDs (the store keeps
// multihashes).
func (s *Store) AllKeysChan(ctx context.Context) (<-chan cid.Cid, error) {
	s.mu.Lock()
	keys := make([]string, 0, len(s.index))
	for k := range s.index {
		keys = append(keys, k)
	}
	s.mu.Unlock()
	ch := make(chan cid.Cid)
	go func() {
		defer close(ch)
		for _, k := range keys {
			select {
			case ch <- cid.NewCidV1(cid.Raw, mh.Multihash(k)):
			case <-ctx.Done():
				return
			}
		}
	}()
	return ch, nil
}

// pin keeps the blocks of cids from eviction until unpin.
func (s *Store) pin(cids []cid.Cid) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range cids {
		s.pins[keyOf(c)]++
	}
}

func (s *Store) unpin(cids []cid.Cid) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range cids {
		k := keyOf(c)
		if s.pins[k]--; s.pins[k] <= 0 {
			delete(s.pins, k)
		}
	}
	s.evictLocked()
}

// evictLocked removes the least recently used blocks not pinned until the
// store is within its cap. s.mu is held.
func (s *Store) evictLocked() {
	for e := s.lru.Back(); e != nil && s.used > s.max; {
		prev := e.Prev()
		en := e.Value.(*entry)
		if s.pins[en.key] == 0 {
			s.lru.Remove(e)
			delete(s.index, en.key)
			s.used -= en.size
			_ = os.Remove(s.path(en.key))
		}
		e = prev
	}
}
