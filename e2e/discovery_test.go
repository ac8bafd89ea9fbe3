package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// The network of TestDiscoverDNSNetns, named after the branch that wrote it so that a run left
// behind is recognisable and removed by name.
const (
	discNetns  = "shoal-mirror-"
	discBridge = "shmirror0"
	discNet    = "10.199.77."
	discName   = "shoal-peers.e2e.test"
	discPort   = 7481
)

// TestDiscoverDNSNetns: three real daemons, each in a network namespace of its own on one
// bridge, with no static peers, no mDNS and no DHT; only --discover-dns NAME:PORT and
// --identity-listen, as the Helm chart configures them. The name is served by a real DNS server
// (miekg/dns, in this test, on the bridge; each namespace's resolv.conf points at it): it stands
// in for the cluster's DNS answering for the chart's headless Service, one A record per daemon
// (and one for an address where nothing runs). The daemons find each other, and the image the
// first prefetched reaches the others from peers: the origin serves it about once.
func TestDiscoverDNSNetns(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: network namespaces")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs ip (iproute2)")
	}
	if _, err := exec.LookPath("mkfs.erofs"); err != nil {
		t.Skip("mkfs.erofs not installed (erofs-utils)")
	}
	const hosts = 3
	setupDiscoveryNet(t, hosts)
	var records []net.IP
	for i := 1; i <= hosts+1; i++ { // the last: an address where no daemon runs
		records = append(records, net.ParseIP(fmt.Sprintf("%s%d", discNet, 10+i)))
	}
	serveDNS(t, discNet+"1:53", discName, records)

	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	sums := makeTree(t, src, 7, 16)
	img := filepath.Join(dir, "img")
	run(t, "image", "build", src, img, "--quiet")
	var inspect struct {
		DataBytes int64 `json:"dataBytes"`
	}
	_ = json.Unmarshal([]byte(run(t, "image", "inspect", img, "--json")), &inspect)
	c := &cluster{t: t, dir: dir, src: src, sums: sums, image: inspect.DataBytes}
	c.origin = fmt.Sprintf("%s1:%d", discNet, freePort(t))
	c.ref = c.origin + "/img:latest"
	o := exec.Command(shoalBin, "origin", "serve", img, "--listen", c.origin)
	if err := o.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = o.Process.Kill(); _ = o.Wait() })
	waitHTTP(t, "http://"+c.origin+"/v2/")

	for i := 1; i <= hosts; i++ {
		c.daemons = append(c.daemons, startNetnsDaemon(t, c, i,
			"--listen", "/ip4/0.0.0.0/tcp/7480", // every interface, as the chart: lo's address is filtered out
			"--identity-listen", fmt.Sprintf("0.0.0.0:%d", discPort),
			"--discover-dns", fmt.Sprintf("%s:%d", discName, discPort),
			"--mdns=false", "--dht=false"))
	}
	peersOf := func(d *daemonProc) (found []string) {
		var peers []struct {
			ID        string   `json:"id"`
			FoundBy   []string `json:"foundBy"`
			Connected bool     `json:"connected"`
		}
		if err := json.Unmarshal([]byte(run(t, "peers", "--json", "--api", d.sock)), &peers); err != nil {
			t.Fatal(err)
		}
		for _, p := range peers {
			if p.Connected {
				found = append(found, strings.Join(p.FoundBy, ","))
			}
		}
		return found
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		ok := true
		for _, d := range c.daemons {
			ok = ok && len(peersOf(d)) == hosts-1
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			for _, d := range c.daemons {
				t.Logf("daemon %d peers: %v", d.n, peersOf(d))
			}
			t.Fatal("the daemons did not all find each other through the DNS name")
		}
		time.Sleep(200 * time.Millisecond)
	}
	// The last to start found both others itself, through the name.
	if found := peersOf(c.daemons[hosts-1]); !slices.Equal(found, []string{"discover-dns", "discover-dns"}) {
		t.Errorf("daemon %d found its peers by %v, want discover-dns for both", hosts, found)
	}

	run(t, "prefetch", c.ref, "--wait", "--api", c.daemons[0].sock)
	for _, d := range c.daemons[1:] {
		run(t, "prefetch", c.ref, "--wait", "--api", d.sock)
		s := c.stats(d)
		if len(s.Images) != 1 || s.Images[0].BytesPresent != c.image || s.VerifyFailures != 0 {
			t.Fatalf("host %d: %+v", d.n, s)
		}
		if s.Bytes.Peers < c.image*9/10 {
			t.Errorf("host %d took %d of %d bytes from peers, want nearly all", d.n, s.Bytes.Peers, c.image)
		}
	}
	ob := c.originBytes()
	t.Logf("image %d bytes; origin served %d (%.2fx) for %d hosts", c.image, ob, float64(ob)/float64(c.image), hosts)
	if ob > c.image*13/10 {
		t.Errorf("origin served %d bytes for a %d-byte image on %d hosts: want about one image", ob, c.image, hosts)
	}
}

// setupDiscoveryNet makes the bridge (discNet.1) and one namespace per host (discNet.1N), each
// with a resolv.conf naming the bridge's address, and removes them when the test ends (and any
// a killed run left first).
func setupDiscoveryNet(t *testing.T, hosts int) {
	ipc := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	teardown := func() {
		for i := 1; i <= hosts; i++ {
			ns := fmt.Sprintf("%s%d", discNetns, i)
			_ = exec.Command("ip", "netns", "del", ns).Run()
			_ = exec.Command("ip", "link", "del", fmt.Sprintf("shmirv%d", i)).Run()
			_ = os.RemoveAll(filepath.Join("/etc/netns", ns))
		}
		_ = exec.Command("ip", "link", "del", discBridge).Run()
	}
	teardown()
	t.Cleanup(teardown)
	ipc("link", "add", discBridge, "type", "bridge")
	ipc("addr", "add", discNet+"1/24", "dev", discBridge)
	ipc("link", "set", discBridge, "up")
	for i := 1; i <= hosts; i++ {
		ns := fmt.Sprintf("%s%d", discNetns, i)
		veth := fmt.Sprintf("shmirv%d", i)
		ipc("netns", "add", ns)
		ipc("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
		ipc("link", "set", veth, "master", discBridge, "up")
		ipc("-n", ns, "addr", "add", fmt.Sprintf("%s%d/24", discNet, 10+i), "dev", "eth0")
		ipc("-n", ns, "link", "set", "eth0", "up")
		ipc("-n", ns, "link", "set", "lo", "up")
		// ip netns exec bind-mounts /etc/netns/NS/resolv.conf over /etc/resolv.conf.
		if err := os.MkdirAll(filepath.Join("/etc/netns", ns), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join("/etc/netns", ns, "resolv.conf"), []byte("nameserver "+discNet+"1\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// serveDNS answers A queries for name with ips, over UDP and TCP on addr, until the test ends.
func serveDNS(t *testing.T, addr, name string, ips []net.IP) {
	fqdn := dns.Fqdn(name)
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		m.Authoritative = true
		if len(r.Question) == 1 && strings.EqualFold(r.Question[0].Name, fqdn) {
			if r.Question[0].Qtype == dns.TypeA {
				for _, ip := range ips {
					m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: fqdn, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 5}, A: ip})
				}
			}
		} else {
			m.Rcode = dns.RcodeNameError
		}
		_ = w.WriteMsg(m)
	})
	for _, network := range []string{"udp", "tcp"} {
		srv := &dns.Server{Addr: addr, Net: network, Handler: h}
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		errc := make(chan error, 1)
		go func() { errc <- srv.ListenAndServe() }()
		select {
		case <-started:
		case err := <-errc:
			t.Fatalf("DNS server on %s/%s: %v", addr, network, err)
		}
		t.Cleanup(func() { _ = srv.Shutdown() })
	}
}

// startNetnsDaemon runs daemon n in namespace discNetns<n>.
func startNetnsDaemon(t *testing.T, c *cluster, n int, extra ...string) *daemonProc {
	d := &daemonProc{n: n, sock: filepath.Join(c.dir, fmt.Sprintf("d%d.sock", n)), log: &syncBuffer{}}
	args := append([]string{"netns", "exec", fmt.Sprintf("%s%d", discNetns, n), shoalBin,
		"daemon", "--data", filepath.Join(c.dir, fmt.Sprintf("d%d", n)), "--api", d.sock,
		"--insecure-registry", c.origin, "--prefetch=false"}, extra...)
	d.cmd = exec.Command("ip", args...)
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// ip netns exec execs the daemon: the signal reaches it.
		_ = d.cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { _ = d.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = d.cmd.Process.Kill()
			<-done
			t.Errorf("daemon %d did not stop on SIGINT within 15s", n)
		}
		if t.Failed() {
			t.Logf("daemon %d log:\n%s", n, d.log.String())
		}
	})
	for range 100 {
		if out, err := exec.Command(shoalBin, "peers", "--self", "--api", d.sock).Output(); err == nil && len(out) > 0 {
			d.addr = strings.SplitN(strings.TrimSpace(string(out)), "\n", 2)[0]
			return d
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("daemon %d did not come up:\n%s", n, d.log.String())
	return nil
}
