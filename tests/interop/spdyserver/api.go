package main

// The read-only slice of the Kubernetes API that kubectl calls before it
// forwards: /version, legacy discovery (/api, /apis, /api/v1) and
// GET /api/v1/namespaces/{ns}/pods/{name}. Any pod name exists and is Running.

import (
	"crypto/sha1"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
)

// handler routes every request; see ServeHTTP.
type handler struct {
	cfg *config
}

func newHandler(cfg *config) http.Handler {
	return &handler{cfg: cfg}
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	logger.Printf("%s %s %s (upgrade=%q, ua=%q)", r.RemoteAddr, r.Method, r.URL.RequestURI(),
		r.Header.Get("Upgrade"), r.Header.Get("User-Agent"))

	path := strings.TrimSuffix(r.URL.Path, "/")
	switch path {
	case "/version":
		h.readOnly(w, r, versionInfo())
		return
	case "/api":
		h.readOnly(w, r, apiVersions(r))
		return
	case "/apis":
		h.readOnly(w, r, apiGroupList())
		return
	case "/api/v1":
		h.readOnly(w, r, coreV1Resources())
		return
	}

	// /api/v1/namespaces/{ns}/pods/{name}[/portforward]
	parts := strings.Split(strings.TrimPrefix(path, "/"), "/")
	if len(parts) >= 6 && parts[0] == "api" && parts[1] == "v1" && parts[2] == "namespaces" &&
		parts[4] == "pods" && parts[3] != "" && parts[5] != "" {
		ns, name := parts[3], parts[5]
		switch {
		case len(parts) == 6:
			h.readOnly(w, r, pod(ns, name))
			return
		case len(parts) == 7 && parts[6] == "portforward":
			h.portForward(w, r, ns, name)
			return
		}
	}
	writeStatus(w, http.StatusNotFound, "NotFound", "the server could not find the requested resource")
}

// readOnly answers GET (and HEAD) with obj as JSON, anything else with 405.
func (h *handler) readOnly(w http.ResponseWriter, r *http.Request, obj interface{}) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		writeStatus(w, http.StatusMethodNotAllowed, "MethodNotAllowed",
			fmt.Sprintf("the server does not allow this method on the requested resource (%s)", r.Method))
		return
	}
	writeJSON(w, http.StatusOK, obj)
}

func writeJSON(w http.ResponseWriter, code int, obj interface{}) {
	body, err := json.Marshal(obj)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-cache, private")
	w.WriteHeader(code)
	_, _ = w.Write(body)
}

// writeStatus writes a metav1.Status failure, as the API server does.
func writeStatus(w http.ResponseWriter, code int, reason, message string) {
	writeJSON(w, code, map[string]interface{}{
		"kind":       "Status",
		"apiVersion": "v1",
		"metadata":   map[string]interface{}{},
		"status":     "Failure",
		"message":    message,
		"reason":     reason,
		"details":    map[string]interface{}{},
		"code":       code,
	})
}

func versionInfo() map[string]interface{} {
	return map[string]interface{}{
		"major":        "1",
		"minor":        "33",
		"gitVersion":   "v1.33.1",
		"gitCommit":    "8adc0f041b8e7ad1d30e29cc59c6ae7a15e19828",
		"gitTreeState": "clean",
		"buildDate":    "2025-05-15T08:19:08Z",
		"goVersion":    "go1.24.2",
		"compiler":     "gc",
		"platform":     "linux/amd64",
	}
}

func apiVersions(r *http.Request) map[string]interface{} {
	addr := r.Host
	if _, _, err := net.SplitHostPort(addr); err != nil {
		addr = net.JoinHostPort(addr, "80")
	}
	return map[string]interface{}{
		"kind":     "APIVersions",
		"versions": []string{"v1"},
		"serverAddressByClientCIDRs": []map[string]string{
			{"clientCIDR": "0.0.0.0/0", "serverAddress": addr},
		},
	}
}

func apiGroupList() map[string]interface{} {
	return map[string]interface{}{
		"kind":       "APIGroupList",
		"apiVersion": "v1",
		"groups":     []interface{}{},
	}
}

func coreV1Resources() map[string]interface{} {
	return map[string]interface{}{
		"kind":         "APIResourceList",
		"groupVersion": "v1",
		"resources": []map[string]interface{}{
			{
				"name":               "namespaces",
				"singularName":       "namespace",
				"namespaced":         false,
				"kind":               "Namespace",
				"verbs":              []string{"create", "delete", "get", "list", "patch", "update", "watch"},
				"shortNames":         []string{"ns"},
				"storageVersionHash": "Q3oi5N2YM8M=",
			},
			{
				"name":               "pods",
				"singularName":       "pod",
				"namespaced":         true,
				"kind":               "Pod",
				"verbs":              []string{"create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"},
				"shortNames":         []string{"po"},
				"categories":         []string{"all"},
				"storageVersionHash": "xPOwRZ+Yhw8=",
			},
			{
				"name":         "pods/portforward",
				"singularName": "",
				"namespaced":   true,
				"kind":         "PodPortForwardOptions",
				"verbs":        []string{"create", "get"},
			},
		},
	}
}

// podUID derives a stable, UUID-shaped uid from namespace and name.
func podUID(ns, name string) string {
	sum := sha1.Sum([]byte(ns + "/" + name))
	return fmt.Sprintf("%x-%x-%x-%x-%x", sum[0:4], sum[4:6], sum[6:8], sum[8:10], sum[10:16])
}

// pod returns a minimal Running pod with a node and one container.
func pod(ns, name string) map[string]interface{} {
	const created = "2025-01-01T00:00:00Z"
	return map[string]interface{}{
		"kind":       "Pod",
		"apiVersion": "v1",
		"metadata": map[string]interface{}{
			"name":              name,
			"namespace":         ns,
			"uid":               podUID(ns, name),
			"resourceVersion":   "1",
			"creationTimestamp": created,
			"labels":            map[string]string{"app": name},
		},
		"spec": map[string]interface{}{
			"nodeName": "spdyserver-node",
			"containers": []map[string]interface{}{
				{"name": "main", "image": "registry.k8s.io/pause:3.10"},
			},
			"restartPolicy": "Always",
		},
		"status": map[string]interface{}{
			"phase":     "Running",
			"hostIP":    "127.0.0.1",
			"podIP":     "127.0.0.1",
			"startTime": created,
			"conditions": []map[string]interface{}{
				{"type": "Ready", "status": "True", "lastTransitionTime": created},
			},
			"containerStatuses": []map[string]interface{}{
				{
					"name":         "main",
					"ready":        true,
					"started":      true,
					"restartCount": 0,
					"image":        "registry.k8s.io/pause:3.10",
					"imageID":      "",
					"state":        map[string]interface{}{"running": map[string]string{"startedAt": created}},
				},
			},
		},
	}
}
