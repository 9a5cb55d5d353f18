package main

// The port-forward subresource: the HTTP/1.1 upgrade handshake of the kubelet
// (k8s.io/streaming httpstream.Handshake + spdy.responseUpgrader), and the
// per-session stream pairing of the kubelet's portforward/httpstream.go,
// built on moby/spdystream exactly as the kubelet uses it. No compensations for
// spdystream's quirks are added on purpose (DATA before SYN_REPLY is dropped,
// no WINDOW_UPDATE is ever sent): clients that only work against a forgiving
// peer must fail here.

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/moby/spdystream"
)

const (
	headerProtocolVersion          = "X-Stream-Protocol-Version"
	headerAcceptedProtocolVersions = "X-Accepted-Stream-Protocol-Versions"
	portForwardProtocol            = "portforward.k8s.io"

	// Stream headers (Go canonicalises them; on the wire they are lowercase).
	headerStreamType = "streamType"
	headerPort       = "port"
	headerRequestID  = "requestID"
	streamTypeError  = "error"
	streamTypeData   = "data"

	// copyBufferSize matches the 32 KiB buffers of kubectl and containerd.
	copyBufferSize = 32 * 1024
)

var sessionCounter uint64

// portForward handles GET/POST .../pods/{name}/portforward.
func (h *handler) portForward(w http.ResponseWriter, r *http.Request, ns, name string) {
	if isWebSocketRequest(r) {
		h.webSocketPortForward(w, r, ns, name)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodPost {
		writeStatus(w, http.StatusMethodNotAllowed, "MethodNotAllowed",
			fmt.Sprintf("the server does not allow this method on the requested resource (%s)", r.Method))
		return
	}

	// 1. Protocol negotiation (httpstream.Handshake).
	if _, ok := handshake(w, r); !ok {
		return
	}

	// 2. Upgrade headers (spdy.responseUpgrader.UpgradeResponse).
	connection := strings.ToLower(r.Header.Get("Connection"))
	upgrade := strings.ToLower(r.Header.Get("Upgrade"))
	if !strings.Contains(connection, "upgrade") || !strings.Contains(upgrade, "spdy/3.1") {
		msg := fmt.Sprintf("unable to upgrade: missing upgrade headers in request: %#v", r.Header)
		logger.Printf("%s: %s", r.RemoteAddr, msg)
		http.Error(w, msg, http.StatusBadRequest)
		return
	}
	hijacker, ok := w.(http.Hijacker)
	if !ok {
		http.Error(w, "unable to upgrade: unable to hijack response", http.StatusInternalServerError)
		return
	}
	w.Header().Add("Connection", "Upgrade")
	w.Header().Add("Upgrade", "SPDY/3.1")
	w.WriteHeader(http.StatusSwitchingProtocols)
	conn, bufrw, err := hijacker.Hijack()
	if err != nil {
		logger.Printf("%s: unable to hijack: %v", r.RemoteAddr, err)
		return
	}
	// Bytes the HTTP reader already buffered belong to the SPDY session.
	serveSession(h.cfg, &bufferedConn{Conn: conn, r: bufrw.Reader}, "spdy", ns, name)
}

// handshake negotiates X-Stream-Protocol-Version. On failure it writes the
// response (400 or 403) and returns false.
func handshake(w http.ResponseWriter, r *http.Request) (string, bool) {
	var offered []string
	for _, v := range r.Header[http.CanonicalHeaderKey(headerProtocolVersion)] {
		for _, p := range strings.Split(v, ",") {
			if p = strings.TrimSpace(p); p != "" {
				offered = append(offered, p)
			}
		}
	}
	if len(offered) == 0 {
		msg := fmt.Sprintf("unable to upgrade: header %s does not exist in request with %d headers",
			headerProtocolVersion, len(r.Header))
		logger.Printf("%s: %s", r.RemoteAddr, msg)
		http.Error(w, msg, http.StatusBadRequest)
		return "", false
	}
	for _, p := range offered {
		if p == portForwardProtocol {
			w.Header().Add(headerProtocolVersion, p)
			return p, true
		}
	}
	w.Header().Add(headerAcceptedProtocolVersions, portForwardProtocol)
	msg := fmt.Sprintf("unable to upgrade: unable to negotiate protocol: client supports %v, server accepts %v",
		offered, []string{portForwardProtocol})
	logger.Printf("%s: %s", r.RemoteAddr, msg)
	http.Error(w, msg, http.StatusForbidden)
	return "", false
}

// bufferedConn is a hijacked connection whose reads drain the HTTP server's
// read buffer first.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// session is one upgraded port-forward connection (kubelet httpStreamHandler).
type session struct {
	id         uint64
	kind       string // "spdy" or "tunnel"
	cfg        *config
	conn       *spdystream.Connection
	pod        string
	uid        string // empty, as with a CRI runtime
	streamChan chan acceptedStream

	pairsLock sync.Mutex
	pairs     map[string]*streamPair

	streamsLock sync.Mutex
	streams     []*spdystream.Stream
}

// serveSession runs the spdystream server on conn until the peer goes away.
func serveSession(cfg *config, conn net.Conn, kind, ns, name string) {
	s := &session{
		id:         atomic.AddUint64(&sessionCounter, 1),
		kind:       kind,
		cfg:        cfg,
		pod:        name,
		streamChan: make(chan acceptedStream, 1),
		pairs:      make(map[string]*streamPair),
	}
	logger.Printf("session %d %s start: pod %s/%s remote=%s", s.id, kind, ns, name, conn.RemoteAddr())

	sc, err := spdystream.NewConnection(conn, true)
	if err != nil {
		logger.Printf("session %d %s: unable to create spdy connection: %v", s.id, kind, err)
		_ = conn.Close()
		return
	}
	s.conn = sc
	go sc.Serve(s.newStream)
	sc.SetIdleTimeout(cfg.idleTimeout)

	s.run()
	s.close()
	logger.Printf("session %d %s end", s.id, kind)
}

// acceptedStream is a validated stream handed to the pairing loop, with a
// channel closed once its SYN_REPLY has been written (apimachinery's
// replySent).
type acceptedStream struct {
	stream    *spdystream.Stream
	replySent <-chan struct{}
}

// newStream is the spdystream handler (kubelet httpStreamReceived +
// spdy.connection.newSpdyStream): validate, hand over, then SYN_REPLY; on
// invalid headers RST_STREAM CANCEL and no reply.
func (s *session) newStream(stream *spdystream.Stream) {
	if err := validateStreamHeaders(stream.Headers()); err != nil {
		logger.Printf("session %d %s: stream %d rejected: %v", s.id, s.kind, stream.Identifier(), err)
		_ = stream.Reset()
		return
	}
	replySent := make(chan struct{})
	select {
	case s.streamChan <- acceptedStream{stream: stream, replySent: replySent}:
	case <-s.conn.CloseChan():
		_ = stream.Reset()
		return
	}
	s.streamsLock.Lock()
	s.streams = append(s.streams, stream)
	s.streamsLock.Unlock()
	if err := stream.SendReply(http.Header{}, false); err != nil {
		logger.Printf("session %d %s: stream %d reply: %v", s.id, s.kind, stream.Identifier(), err)
	}
	close(replySent)
}

func validateStreamHeaders(h http.Header) error {
	portString := h.Get(headerPort)
	if portString == "" {
		return fmt.Errorf("%q header is required", headerPort)
	}
	port, err := strconv.ParseUint(portString, 10, 16)
	if err != nil {
		return fmt.Errorf("unable to parse %q as a port: %v", portString, err)
	}
	if port < 1 {
		return fmt.Errorf("port %q must be > 0", portString)
	}
	streamType := h.Get(headerStreamType)
	if streamType == "" {
		return fmt.Errorf("%q header is required", headerStreamType)
	}
	if streamType != streamTypeError && streamType != streamTypeData {
		return fmt.Errorf("invalid stream type %q", streamType)
	}
	return nil
}

// close resets every stream and closes the spdystream connection (GOAWAY,
// then the transport once the streams are gone), like the kubelet's
// spdy.connection.Close.
func (s *session) close() {
	s.streamsLock.Lock()
	for _, st := range s.streams {
		_ = st.Reset()
	}
	s.streams = nil
	s.streamsLock.Unlock()
	_ = s.conn.Close()
}

// run pairs streams by request id until the connection closes.
func (s *session) run() {
	for {
		select {
		case <-s.conn.CloseChan():
			return
		case accepted := <-s.streamChan:
			stream := accepted.stream
			requestID := s.requestID(stream)
			streamType := stream.Headers().Get(headerStreamType)
			logger.Printf("session %d %s: stream %d type=%s port=%s request=%s", s.id, s.kind,
				stream.Identifier(), streamType, stream.Headers().Get(headerPort), requestID)
			p, created := s.getStreamPair(requestID)
			if created {
				go s.monitorStreamPair(p, time.After(s.cfg.streamCreationTimeout))
			}
			if complete, err := p.add(stream, accepted.replySent); err != nil {
				msg := fmt.Sprintf("error processing stream for request %s: %v", requestID, err)
				logger.Printf("session %d %s: %s", s.id, s.kind, msg)
				p.printError(msg)
			} else if complete {
				go s.portForward(p)
			}
		}
	}
}

// requestID returns the requestid header or, for pre-2016 clients, derives
// it from the stream id (error: id, data: id-2).
func (s *session) requestID(stream *spdystream.Stream) string {
	requestID := stream.Headers().Get(headerRequestID)
	if requestID != "" {
		return requestID
	}
	switch stream.Headers().Get(headerStreamType) {
	case streamTypeError:
		requestID = strconv.Itoa(int(stream.Identifier()))
	case streamTypeData:
		requestID = strconv.Itoa(int(stream.Identifier()) - 2)
	}
	logger.Printf("session %d %s: stream %d has no requestid, derived %s", s.id, s.kind, stream.Identifier(), requestID)
	return requestID
}

func (s *session) getStreamPair(requestID string) (*streamPair, bool) {
	s.pairsLock.Lock()
	defer s.pairsLock.Unlock()
	if p, ok := s.pairs[requestID]; ok {
		return p, false
	}
	p := &streamPair{requestID: requestID, complete: make(chan struct{})}
	s.pairs[requestID] = p
	return p, true
}

func (s *session) removeStreamPair(requestID string) {
	s.pairsLock.Lock()
	defer s.pairsLock.Unlock()
	delete(s.pairs, requestID)
}

// monitorStreamPair reports a pair that is not complete in time on its error
// stream (if any) and forgets it; it neither FINs nor resets.
func (s *session) monitorStreamPair(p *streamPair, timeout <-chan time.Time) {
	select {
	case <-timeout:
		msg := fmt.Sprintf("(conn=%p, request=%s) timed out waiting for streams", s.conn, p.requestID)
		logger.Printf("session %d %s: %s", s.id, s.kind, msg)
		p.printError(msg)
	case <-p.complete:
	case <-s.conn.CloseChan():
	}
	s.removeStreamPair(p.requestID)
}

// portForward dials the target and copies both ways until both directions
// are done, then closes the error stream (FIN). A dial failure is written on
// the error stream and both streams are reset.
func (s *session) portForward(p *streamPair) {
	// Dial only once both SYN_REPLYs are on the wire. The kubelet hands the
	// stream over before replying too, but its CRI dial is slow enough that
	// the replies always go first; with a loopback dial a refused port would
	// otherwise put RST_STREAM ahead of SYN_REPLY (see §1.6 for the trace).
	for _, replied := range p.replySent {
		select {
		case <-replied:
		case <-s.conn.CloseChan():
			return
		}
	}

	portString := p.dataStream.Headers().Get(headerPort)
	port, _ := strconv.ParseUint(portString, 10, 16)
	target := net.JoinHostPort(s.cfg.targetHost, strconv.FormatUint(port, 10))
	logger.Printf("session %d %s: request %s: dialing %s", s.id, s.kind, p.requestID, target)

	dialer := net.Dialer{Timeout: 30 * time.Second}
	conn, err := dialer.Dial("tcp", target)
	if err != nil {
		msg := fmt.Sprintf("error forwarding port %d to pod %s, uid %v: %v", port, s.pod, s.uid, err)
		logger.Printf("session %d %s: request %s: %s", s.id, s.kind, p.requestID, msg)
		_, _ = fmt.Fprint(p.errorStream, msg)
		_ = p.dataStream.Reset()
		_ = p.errorStream.Reset()
		return
	}
	tcp := conn.(*net.TCPConn)

	var toPod, fromPod int64
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { // client -> pod
		defer wg.Done()
		n, err := io.CopyBuffer(writerOnly{tcp}, readerOnly{p.dataStream}, make([]byte, copyBufferSize))
		toPod = n
		if err != nil {
			logger.Printf("session %d %s: request %s: client->pod: %v", s.id, s.kind, p.requestID, err)
		}
		// Client half-closed (FIN) or reset the data stream.
		_ = tcp.CloseWrite()
	}()
	go func() { // pod -> client
		defer wg.Done()
		n, err := io.CopyBuffer(writerOnly{p.dataStream}, readerOnly{tcp}, make([]byte, copyBufferSize))
		fromPod = n
		if err != nil {
			logger.Printf("session %d %s: request %s: pod->client: %v", s.id, s.kind, p.requestID, err)
		}
		// The pod side ended: half-close the data stream.
		if err := p.dataStream.Close(); err != nil && !errors.Is(err, spdystream.ErrWriteClosedStream) {
			logger.Printf("session %d %s: request %s: close data stream: %v", s.id, s.kind, p.requestID, err)
		}
	}()

	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-s.conn.CloseChan():
		// Session gone: unblock the pod reader.
		_ = tcp.Close()
		<-done
	}
	_ = tcp.Close()
	_ = p.errorStream.Close()
	logger.Printf("session %d %s: request %s: done (client->pod %d bytes, pod->client %d bytes)",
		s.id, s.kind, p.requestID, toPod, fromPod)
}

// streamPair is the error+data stream pair of one forwarded connection.
type streamPair struct {
	lock        sync.RWMutex
	requestID   string
	dataStream  *spdystream.Stream
	errorStream *spdystream.Stream
	replySent   []<-chan struct{}
	complete    chan struct{}
}

func (p *streamPair) add(stream *spdystream.Stream, replySent <-chan struct{}) (bool, error) {
	p.lock.Lock()
	defer p.lock.Unlock()
	switch stream.Headers().Get(headerStreamType) {
	case streamTypeError:
		if p.errorStream != nil {
			return false, errors.New("error stream already assigned")
		}
		p.errorStream = stream
	case streamTypeData:
		if p.dataStream != nil {
			return false, errors.New("data stream already assigned")
		}
		p.dataStream = stream
	}
	p.replySent = append(p.replySent, replySent)
	complete := p.errorStream != nil && p.dataStream != nil
	if complete {
		close(p.complete)
	}
	return complete, nil
}

func (p *streamPair) printError(msg string) {
	p.lock.RLock()
	defer p.lock.RUnlock()
	if p.errorStream != nil {
		_, _ = fmt.Fprint(p.errorStream, msg)
	}
}

// readerOnly and writerOnly hide ReaderFrom/WriterTo so io.CopyBuffer really
// uses the 32 KiB buffer (one DATA frame per pod read).
type readerOnly struct{ io.Reader }

type writerOnly struct{ io.Writer }
