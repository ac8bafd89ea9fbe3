package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
)

// The control API: HTTP with JSON bodies (wire.go) on a root-only unix socket. It is the only way
// the CLI talks to the daemon. Errors are {"error": "..."} with a 4xx/5xx status. Each handler
// decodes, calls the service and encodes: no logic lives here.
//
//	GET    /v1/status            this host: peer ID, addresses, version, uptime
//	GET    /v1/stats             StatsReport (the schema of `shoal stats --json`)
//	GET    /v1/peers             []PeerReport
//	GET    /v1/images            []ImageReport
//	POST   /v1/images            MountRequest: add an image, mount it if Mountpoint is set
//	POST   /v1/prefetch          PrefetchRequest: add an image and fetch all of it
//	POST   /v1/umount            UmountRequest
//	POST   /v1/images/remove     RemoveRequest: forget an unmounted image
func apiHandler(s *service) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, s.Status()) })
	mux.HandleFunc("GET /v1/stats", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, s.Stats()) })
	mux.HandleFunc("GET /v1/peers", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, s.Stats().Peers) })
	mux.HandleFunc("GET /v1/images", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, s.Stats().Images) })
	mux.HandleFunc("POST /v1/images", func(w http.ResponseWriter, r *http.Request) {
		var req MountRequest
		if readJSON(w, r, &req) {
			resp, err := s.Mount(r.Context(), req)
			reply(w, resp, err)
		}
	})
	mux.HandleFunc("POST /v1/prefetch", func(w http.ResponseWriter, r *http.Request) {
		var req PrefetchRequest
		if readJSON(w, r, &req) {
			resp, err := s.Prefetch(r.Context(), req)
			reply(w, resp, err)
		}
	})
	mux.HandleFunc("POST /v1/images/remove", func(w http.ResponseWriter, r *http.Request) {
		var req RemoveRequest
		if readJSON(w, r, &req) {
			reply(w, map[string]string{"removed": req.Image}, s.Remove(req.Image))
		}
	})
	mux.HandleFunc("POST /v1/umount", func(w http.ResponseWriter, r *http.Request) {
		var req UmountRequest
		if readJSON(w, r, &req) {
			reply(w, map[string]string{"unmounted": req.Mountpoint}, s.Umount(req.Mountpoint))
		}
	})
	return mux
}

// reply writes v, or err with the status its kind calls for.
func reply(w http.ResponseWriter, v any, err error) {
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}

func writeError(w http.ResponseWriter, err error) {
	code := http.StatusInternalServerError
	switch {
	case errors.Is(err, errBadRequest):
		code = http.StatusBadRequest
	case errors.Is(err, errNotFound):
		code = http.StatusNotFound
	case errors.Is(err, errStopping):
		code = http.StatusServiceUnavailable
	}
	writeJSON(w, code, map[string]string{"error": err.Error()})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeError(w, fmt.Errorf("%w: %v", errBadRequest, err))
		return false
	}
	return true
}
