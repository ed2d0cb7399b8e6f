package testdocker

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"
)

// Engine starts a Docker engine of the test's own: its own data root,
// exec root, pid file and socket, in a network namespace of its own (an
// engine started in the root namespace with no bridge would take the
// first engine's docker0 away), with no bridge and no iptables rules. It
// returns the engine's address, for DOCKER_HOST or node.Config.DockerHost;
// the engine is stopped and its folders removed when the test ends. Its
// containers have no network but their loopback. Where the first engine
// is missing, or root, dockerd, nsenter or ip, it skips the test (fails
// it when $CI is set: EnsureImage's rule); it fails it where the second
// engine does not start.
func Engine(tb testing.TB) string {
	tb.Helper()
	Client(tb) // skips with no engine at all
	missing := ""
	if os.Geteuid() != 0 {
		missing = "root"
	}
	for _, bin := range []string{"dockerd", "nsenter", "ip"} {
		if _, err := exec.LookPath(bin); err != nil {
			missing = bin
		}
	}
	if missing != "" {
		msg := "a second Docker engine needs " + missing
		if os.Getenv("CI") != "" {
			tb.Fatalf("%s; CI must run the docker tests", msg)
		}
		tb.Skip(msg)
	}
	name := fmt.Sprintf("gmtd%06d", rand.IntN(1e6))
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		tb.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	// A short folder: the socket's path must fit a unix address.
	dir, err := os.MkdirTemp("", "gmtd")
	if err != nil {
		tb.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "dockerd.log"))
	if err != nil {
		tb.Fatal(err)
	}
	sock := "unix://" + filepath.Join(dir, "docker.sock")
	cmd := exec.Command("nsenter", "--net=/run/netns/"+name, "dockerd",
		"--data-root", filepath.Join(dir, "data"), "--exec-root", filepath.Join(dir, "exec"),
		"--pidfile", filepath.Join(dir, "docker.pid"), "-H", sock,
		"--bridge", "none", "--iptables=false", "--ip-masq=false",
		// The first engine's containerd is not shared: its own, under
		// the exec root.
		"--containerd-namespace", name, "--containerd-plugins-namespace", name+"p")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		tb.Fatalf("starting a second dockerd: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	tb.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		_ = logf.Close()
		_ = exec.Command("ip", "netns", "del", name).Run()
		// What the engine left mounted under its root goes first.
		if out, err := exec.Command("sh", "-c", "grep -o ' "+dir+"[^ ]*' /proc/mounts | sort -r | xargs -r -n1 umount -l").CombinedOutput(); err != nil {
			tb.Logf("unmounting %s: %v: %s", dir, err, out)
		}
		_ = os.RemoveAll(dir)
	})
	cli, err := client.NewClientWithOpts(client.WithHost(sock), client.WithAPIVersionNegotiation())
	if err != nil {
		tb.Fatal(err)
	}
	defer cli.Close()
	deadline := time.Now().Add(90 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := cli.Ping(ctx)
		cancel()
		if err == nil {
			return sock
		}
		select {
		case werr := <-exited:
			exited <- werr
			tb.Fatalf("the second dockerd exited (%v): %s", werr, tail(filepath.Join(dir, "dockerd.log")))
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			tb.Fatalf("the second dockerd did not answer within 90 s (%v): %s", err, tail(filepath.Join(dir, "dockerd.log")))
		}
	}
}

func tail(path string) string {
	b, _ := os.ReadFile(path)
	s := string(b)
	if len(s) > 4000 {
		s = s[len(s)-4000:]
	}
	return strings.TrimSpace(s)
}

// Images lists the images of the engine at host (an address Engine
// returned): ID and names of each.
func Images(tb testing.TB, host string) []string {
	tb.Helper()
	cli, err := client.NewClientWithOpts(client.WithHost(host), client.WithAPIVersionNegotiation())
	if err != nil {
		tb.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	list, err := cli.ImageList(ctx, image.ListOptions{All: true})
	if err != nil {
		tb.Fatal(err)
	}
	var out []string
	for _, im := range list {
		out = append(out, fmt.Sprintf("%s %v", im.ID, im.RepoTags))
	}
	return out
}
