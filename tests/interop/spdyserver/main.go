// Command spdyserver is an independent Kubernetes port-forward peer used as a
// test fixture for podgate. It emulates just enough of the API server (read-only
// discovery and GET pod) for real kubectl to run `kubectl port-forward`, and it
// terminates the port-forward upgrade itself the way the kubelet / CRI
// streaming server does, on top of github.com/moby/spdystream, the SPDY framing
// library the kubelet uses.
//
// Usage:
//
//	spdyserver --listen 127.0.0.1:0 [--tunnel] [--target-host 127.0.0.1]
//
// Once the listener accepts connections it prints exactly one line on stdout:
//
//	Listening on http://HOST:PORT
//
// Everything else goes to stderr. SIGTERM (or SIGINT) closes the listener and
// exits with status 0.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

// config holds the command-line options shared by the HTTP handlers.
type config struct {
	// tunnel enables the KEP-4006 WebSocket tunnel (SPDY/3.1+portforward.k8s.io).
	tunnel bool
	// targetHost is the host dialled for every forwarded port ("the pod").
	targetHost string
	// streamCreationTimeout is how long the second stream of a pair may lag
	// behind the first (kubelet StreamCreationTimeout, default 30 s).
	streamCreationTimeout time.Duration
	// idleTimeout closes a session without frames for this long (kubelet
	// StreamIdleTimeout, default 4 h).
	idleTimeout time.Duration
}

var logger = log.New(os.Stderr, "spdyserver: ", log.LstdFlags|log.Lmicroseconds)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on (HOST:PORT; port 0 picks a free port)")
	tunnel := flag.Bool("tunnel", false, "also accept the WebSocket tunnel (SPDY/3.1+portforward.k8s.io), like API server >= 1.31")
	targetHost := flag.String("target-host", "127.0.0.1", "host to dial for forwarded ports (stands in for the pod)")
	pairTimeout := flag.Duration("stream-creation-timeout", 30*time.Second, "max delay between the two streams of a pair")
	idleTimeout := flag.Duration("idle-timeout", 4*time.Hour, "SPDY session idle timeout")
	flag.Parse()
	if flag.NArg() != 0 {
		fmt.Fprintf(os.Stderr, "spdyserver: unexpected arguments: %v\n", flag.Args())
		os.Exit(2)
	}

	cfg := &config{
		tunnel:                *tunnel,
		targetHost:            *targetHost,
		streamCreationTimeout: *pairTimeout,
		idleTimeout:           *idleTimeout,
	}

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		logger.Fatalf("listen %s: %v", *listen, err)
	}

	stopping := make(chan struct{})
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		sig := <-sigs
		logger.Printf("received %v, closing listener", sig)
		close(stopping)
		_ = ln.Close()
		os.Exit(0)
	}()

	srv := &http.Server{
		Handler:           newHandler(cfg),
		ReadHeaderTimeout: 30 * time.Second,
		ErrorLog:          logger,
	}

	logger.Printf("serving on %s (tunnel=%v, target-host=%s)", ln.Addr(), cfg.tunnel, cfg.targetHost)
	out := bufio.NewWriter(os.Stdout)
	fmt.Fprintf(out, "Listening on http://%s\n", ln.Addr().String())
	if err := out.Flush(); err != nil {
		logger.Fatalf("write readiness line: %v", err)
	}

	err = srv.Serve(ln)
	select {
	case <-stopping:
		// The signal goroutine closed the listener and is exiting with 0.
		os.Exit(0)
	default:
		logger.Fatalf("serve: %v", err)
	}
}
