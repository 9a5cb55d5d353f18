// A single-member etcd for the real-apiserver test tier, built by tests/cluster/build.sh
// from the etcd 3.4.13 that kubernetes v1.20.2 vendors (go.etcd.io/etcd/embed).
//
//	etcd --data-dir DIR [--listen-client 127.0.0.1:0] [--listen-peer 127.0.0.1:0] [--unsafe-no-fsync]
//
// Port 0 picks a free port; once it serves, it prints one line on stdout:
//
//	etcd ready: client http://127.0.0.1:PORT
//
// SIGTERM or SIGINT closes it cleanly.
package main

import (
	"flag"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"syscall"

	"go.etcd.io/etcd/embed"
)

func mustURL(hostPort string) url.URL {
	u, err := url.Parse("http://" + hostPort)
	if err != nil {
		fmt.Fprintf(os.Stderr, "etcd: invalid address %q: %v\n", hostPort, err)
		os.Exit(2)
	}
	return *u
}

func main() {
	dataDir := flag.String("data-dir", "", "where etcd keeps its data (required)")
	client := flag.String("listen-client", "127.0.0.1:0", "client address (port 0: a free one)")
	peer := flag.String("listen-peer", "127.0.0.1:0", "peer address (port 0: a free one)")
	noFsync := flag.Bool("unsafe-no-fsync", false, "never fsync (throw-away test data only)")
	flag.Parse()
	if *dataDir == "" {
		fmt.Fprintln(os.Stderr, "etcd: --data-dir is required")
		os.Exit(2)
	}

	cfg := embed.NewConfig()
	cfg.Name = "podgate-test"
	cfg.Dir = *dataDir
	clientURL, peerURL := mustURL(*client), mustURL(*peer)
	cfg.LCUrls, cfg.ACUrls = []url.URL{clientURL}, []url.URL{clientURL}
	cfg.LPUrls, cfg.APUrls = []url.URL{peerURL}, []url.URL{peerURL}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.UnsafeNoFsync = *noFsync
	cfg.Logger = "zap"
	cfg.LogOutputs = []string{"stderr"}
	cfg.LogLevel = "warn"

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "etcd: cannot start: %v\n", err)
		os.Exit(1)
	}
	defer e.Close()
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		fmt.Fprintf(os.Stderr, "etcd: failed before ready: %v\n", err)
		os.Exit(1)
	case <-signals:
		return
	}
	fmt.Printf("etcd ready: client http://%s\n", e.Clients[0].Addr().String())
	select {
	case err := <-e.Err():
		fmt.Fprintf(os.Stderr, "etcd: %v\n", err)
		os.Exit(1)
	case <-signals:
	}
}
