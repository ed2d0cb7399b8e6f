// Package jobnet gives the members of a job of several members a network
// of their own: each member has an address on a subnet private to its job
// (Subnet, Addr), on an interface inside its own network namespace (a TUN
// device the provider made and moved there, Attach), and no other route —
// not to its provider's host, loopback, LAN or metadata addresses; a
// container member whose job asks for egress also sits on its provider's
// filtered egress bridge (package exec), for the internet only.
//
// Packets between members travel between their providers over libp2p
// streams (Protocol), so they go however the two providers reach each
// other: direct, hole-punched or relayed. A provider reads each packet a
// member sends, checks it (Plan.Outbound: from the member's own address,
// to another member of its job) and queues it on its stream to the
// provider of that member; the receiving provider checks it again
// (Plan.Inbound: from a member the sender runs, to a member it runs
// itself, at most MTU bytes) and writes it into its member's interface,
// within the member's rates. A provider that sends what it may not has
// its stream closed. The decisions are Plan's methods, pure and tested
// alone; Net is the I/O around them.
//
// Every provider of a job computes the same plan from the start frame's
// list of the members' providers: the subnet comes from the job's ID, a
// member's address from its rank.
package jobnet
