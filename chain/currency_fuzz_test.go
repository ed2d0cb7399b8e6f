package chain

import (
	"bytes"
	"encoding/binary"
	"testing"

	solana "github.com/gagliardetto/solana-go"
)

// FuzzReadTransfer feeds readTransfer what a transaction's instruction may
// hold: any program among the three it reads, any accounts, any data. It
// must never panic, and what it reads must come from what it was given.
func FuzzReadTransfer(f *testing.F) {
	checked := append([]byte{12}, binary.LittleEndian.AppendUint64(nil, 1_500_000)...)
	f.Add(uint8(2), uint8(4), append(checked, 6))
	f.Add(uint8(2), uint8(3), append([]byte{3}, binary.LittleEndian.AppendUint64(nil, 7)...))
	f.Add(uint8(1), uint8(2), transferData(5000))
	f.Add(uint8(2), uint8(1), checked)
	f.Add(uint8(0), uint8(0), []byte{})
	programs := []solana.PublicKey{solana.MemoProgramID, solana.SystemProgramID, solana.TokenProgramID}
	f.Fuzz(func(t *testing.T, prog, naccounts uint8, data []byte) {
		accounts := make([]solana.PublicKey, int(naccounts)%8)
		for i := range accounts {
			accounts[i][0] = byte(i + 1)
		}
		tr, ok := readTransfer(programs[int(prog)%len(programs)], accounts, data)
		if !ok {
			return
		}
		in := func(k solana.PublicKey) bool {
			for _, a := range accounts {
				if a.Equals(k) {
					return true
				}
			}
			return false
		}
		if !in(tr.authority) || !in(tr.to) || (tr.mint != nil && !in(*tr.mint)) {
			t.Fatalf("read %+v from accounts it was not given", tr)
		}
		if len(data) < 9 || (!tr.sol && !bytes.Equal(binary.LittleEndian.AppendUint64(nil, tr.amount), data[1:9])) {
			t.Fatalf("amount %d is not the data's %x", tr.amount, data)
		}
	})
}
