package content

// BulkPerPeer is the bulk streams one peer may hold open here at once.
const BulkPerPeer = bulkPerPeer

// SetBulkLanes sets the streams a fetch takes from one peer, and returns
// a func that puts the number back.
func SetBulkLanes(n int) (undo func()) {
	old := bulkLanes
	bulkLanes = n
	return func() { bulkLanes = old }
}
