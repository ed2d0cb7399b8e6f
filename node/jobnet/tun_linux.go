package jobnet

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// IfName is the job interface's name inside a member's namespace.
const IfName = "jobnet0"

// Iface is one member's job interface: a TUN device inside the member's
// network namespace whose packets this provider reads and writes through
// its file. Closing the file removes the device.
type Iface struct {
	f *os.File
}

// Read reads one packet the member sent.
func (i *Iface) Read(b []byte) (int, error) { return i.f.Read(b) }

// Write hands the member one packet.
func (i *Iface) Write(b []byte) (int, error) { return i.f.Write(b) }

// Close removes the interface; a Read blocked on it returns.
func (i *Iface) Close() error { return i.f.Close() }

// openTUN makes a TUN device (IPv4 packets, no header) named name in this
// process's network namespace.
func openTUN(name string) (*os.File, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("jobnet: opening /dev/net/tun: %w (the provider needs root, or CAP_NET_ADMIN, and the tun module)", err)
	}
	req, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("jobnet: interface name %q: %w", name, err)
	}
	req.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, req); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("jobnet: making TUN device %s: %w", name, err)
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("jobnet: TUN device %s: %w", name, err)
	}
	return os.NewFile(uintptr(fd), "/dev/net/tun:"+name), nil
}

// Probe says whether this process can make job interfaces: it makes a TUN
// device and removes it at once. A provider that cannot (not root, no
// CAP_NET_ADMIN, no tun module) offers only jobs it can take whole.
func Probe() error {
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	f, err := openTUN("gpmp" + hex.EncodeToString(rnd[:]))
	if err != nil {
		return err
	}
	return f.Close()
}

// Attach gives the network namespace ns a job interface: a TUN device
// made here in the provider's namespace, moved into ns, named IfName,
// with address addr and mtu, up; ns's loopback is brought up too. The
// namespace gets no other route: only addr's subnet is reachable. What
// runs inside ns needs no capability for any of it.
func Attach(ns netns.NsHandle, addr netip.Prefix, mtu int) (*Iface, error) {
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	name := "gpmj" + hex.EncodeToString(rnd[:])
	f, err := openTUN(name)
	if err != nil {
		return nil, err
	}
	fail := func(what string, err error) (*Iface, error) {
		f.Close()
		return nil, fmt.Errorf("jobnet: %s: %w", what, err)
	}
	link, err := netlink.LinkByName(name)
	if err != nil {
		return fail("finding "+name, err)
	}
	if err := netlink.LinkSetNsFd(link, int(ns)); err != nil {
		return fail("moving "+name+" into the member's namespace", err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fail("entering the member's namespace", err)
	}
	defer h.Close()
	if link, err = h.LinkByName(name); err != nil {
		return fail("finding "+name+" in the member's namespace", err)
	}
	if err := h.LinkSetName(link, IfName); err != nil {
		return fail("naming "+name, err)
	}
	_ = h.LinkSetIP6AddrGenMode(link, 1) // IN6_ADDR_GEN_MODE_NONE: no IPv6 link-local address, no chatter
	if err := h.LinkSetMTU(link, mtu); err != nil {
		return fail("setting the MTU", err)
	}
	ip := addr.Addr().AsSlice()
	ipnet := &net.IPNet{IP: ip, Mask: net.CIDRMask(addr.Bits(), 32)}
	if err := h.AddrAdd(link, &netlink.Addr{IPNet: ipnet}); err != nil {
		return fail("adding "+addr.String(), err)
	}
	if lo, err := h.LinkByName("lo"); err == nil {
		_ = h.LinkSetUp(lo)
	}
	if err := h.LinkSetUp(link); err != nil {
		return fail("bringing "+IfName+" up", err)
	}
	return &Iface{f: f}, nil
}
