package content

// BulkPerPeer is the bulk streams one peer may hold open here at once.
const BulkPerPeer = bulkPerPeer
