package content_test

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// A shared root is served to a peer granted nothing; once unshared, a
// peer asking gets nothing. Open reads a file's bytes back from the store.
func TestSharedRootsGoToAnyPeerUntilUnshared(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := tree(t, 3<<20+7)
	ha, a := peerOn(t, 0)
	root, err := a.Add(ctx, filepath.Join(dir, "sub", "data.bin"), 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Share(ctx, root.CID); err != nil {
		t.Fatal(err)
	}
	if err := a.Share(ctx, root.CID); err != nil { // twice: one Unshare undoes it
		t.Fatal(err)
	}
	hb, b := peerOn(t, 0)
	connect(t, hb, ha)
	st, release, err := b.Fetch(ctx, root.CID, 0)
	if err != nil {
		t.Fatalf("a peer granted nothing, of a shared root: %v", err)
	}
	defer release()
	if st.FetchedBytes < 3<<20 {
		t.Fatalf("fetched %+v", st)
	}
	r, err := b.Open(ctx, root.CID)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(r)
	r.Close()
	want, _ := os.ReadFile(filepath.Join(dir, "sub", "data.bin"))
	if !bytes.Equal(got, want) {
		t.Fatalf("Open read %d bytes, want the %d added", len(got), len(want))
	}

	a.Unshare(root.CID)
	hc, c := peerOn(t, 0)
	connect(t, hc, ha)
	short, cancel2 := context.WithTimeout(ctx, 3*time.Second)
	defer cancel2()
	if _, _, err := c.Fetch(short, root.CID, 0); err == nil {
		t.Fatal("a peer granted nothing fetched an unshared root")
	}

	folder, err := a.Add(ctx, dir, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Open(ctx, folder.CID); err == nil {
		t.Fatal("Open of a folder: no error")
	}
}
