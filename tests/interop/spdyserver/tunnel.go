package main

// WebSocket handling on the portforward path. With --tunnel this emulates the
// API server's KEP-4006 stream tunnel (apiserver pkg/util/proxy/streamtunnel.go)
// in front of a kubelet: the WebSocket carrying SPDY/3.1+portforward.k8s.io is
// turned into a net.Conn and the very same spdystream server runs on it.
// Without --tunnel it answers like an old API server proxying to a kubelet that
// requires the `port` parameter (400), which makes kubectl >= 1.31 fall back
// to plain SPDY.

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

const tunnelProtocolPrefix = "SPDY/3.1+"

// isWebSocketRequest mirrors wsstream.IsWebSocketRequest.
func isWebSocketRequest(r *http.Request) bool {
	if !strings.Contains(strings.ToLower(r.Header.Get("Connection")), "upgrade") {
		return false
	}
	return strings.EqualFold(r.Header.Get("Upgrade"), "websocket")
}

func (h *handler) webSocketPortForward(w http.ResponseWriter, r *http.Request, ns, name string) {
	var tunnelProtocol string
	for _, p := range websocket.Subprotocols(r) {
		if strings.HasPrefix(p, tunnelProtocolPrefix) && strings.HasSuffix(p, ".k8s.io") {
			tunnelProtocol = p
			break
		}
	}

	if !h.cfg.tunnel || tunnelProtocol == "" {
		// Passed through to the kubelet, which requires ?port= for WebSocket
		// port-forward (v4.channel.k8s.io), which this server does not emulate.
		var msg string
		if len(r.URL.Query()["ports"]) == 0 {
			msg = `query parameter "port" is required`
		} else {
			msg = "spdyserver: v4.channel.k8s.io WebSocket port-forward is not emulated"
		}
		logger.Printf("%s: websocket port-forward rejected (tunnel=%v, offered=%q): 400 %s",
			r.RemoteAddr, h.cfg.tunnel, websocket.Subprotocols(r), msg)
		http.Error(w, msg, http.StatusBadRequest)
		return
	}

	// The API server asks the kubelet for the SPDY protocol named after the
	// prefix; a kubelet 403 is replayed verbatim.
	spdyProtocol := strings.TrimPrefix(tunnelProtocol, tunnelProtocolPrefix)
	if spdyProtocol != portForwardProtocol {
		w.Header().Add(headerAcceptedProtocolVersions, portForwardProtocol)
		msg := fmt.Sprintf("unable to upgrade: unable to negotiate protocol: client supports %v, server accepts %v",
			[]string{spdyProtocol}, []string{portForwardProtocol})
		logger.Printf("%s: tunnel rejected: %s", r.RemoteAddr, msg)
		http.Error(w, msg, http.StatusForbidden)
		return
	}

	upgrader := websocket.Upgrader{
		CheckOrigin:  func(*http.Request) bool { return true },
		Subprotocols: []string{tunnelProtocol},
	}
	ws, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		// Upgrade has already written an HTTP error response.
		logger.Printf("%s: tunnel upgrade failed: %v", r.RemoteAddr, err)
		return
	}
	logger.Printf("%s: tunnel upgraded (subprotocol %q)", r.RemoteAddr, ws.Subprotocol())
	serveSession(h.cfg, newWebSocketConn(ws), "tunnel", ns, name)
}

// webSocketConn adapts a WebSocket to net.Conn like client-go's
// TunnelingConnection: Read concatenates binary message payloads (a text
// message is an error, close 1000 is EOF); each Write is one binary message.
type webSocketConn struct {
	ws        *websocket.Conn
	current   io.Reader
	writeLock sync.Mutex
	closeOnce sync.Once
	closeErr  error
}

func newWebSocketConn(ws *websocket.Conn) *webSocketConn {
	return &webSocketConn{ws: ws}
}

func (c *webSocketConn) Read(p []byte) (int, error) {
	for {
		if c.current == nil {
			messageType, r, err := c.ws.NextReader()
			if err != nil {
				if websocket.IsCloseError(err, websocket.CloseNormalClosure) {
					return 0, io.EOF
				}
				return 0, err
			}
			if messageType != websocket.BinaryMessage {
				return 0, fmt.Errorf("invalid message type received")
			}
			c.current = r
		}
		n, err := c.current.Read(p)
		if err == io.EOF {
			c.current = nil
			if n > 0 {
				return n, nil
			}
			continue
		}
		return n, err
	}
}

func (c *webSocketConn) Write(p []byte) (int, error) {
	c.writeLock.Lock()
	defer c.writeLock.Unlock()
	if err := c.ws.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Close sends a close frame with status 1000, then closes the socket.
func (c *webSocketConn) Close() error {
	c.closeOnce.Do(func() {
		msg := websocket.FormatCloseMessage(websocket.CloseNormalClosure, "")
		_ = c.ws.WriteControl(websocket.CloseMessage, msg, time.Now().Add(time.Second))
		c.closeErr = c.ws.Close()
	})
	return c.closeErr
}

func (c *webSocketConn) LocalAddr() net.Addr  { return c.ws.LocalAddr() }
func (c *webSocketConn) RemoteAddr() net.Addr { return c.ws.RemoteAddr() }

func (c *webSocketConn) SetDeadline(t time.Time) error {
	return c.ws.UnderlyingConn().SetDeadline(t)
}

func (c *webSocketConn) SetReadDeadline(t time.Time) error { return c.ws.SetReadDeadline(t) }

func (c *webSocketConn) SetWriteDeadline(t time.Time) error { return c.ws.SetWriteDeadline(t) }
