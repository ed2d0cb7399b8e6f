package node

// JobMoved hands the external tests the node's job-change notification: a
// channel closed at the next change of any job, so a test waits on the event
// instead of polling Job.
func (n *Node) JobMoved() <-chan struct{} { return n.jobMoved() }
