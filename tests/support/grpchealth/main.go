// grpc-health: a tiny gRPC server answering grpc.health.v1.Health/Check, for probe tests.
//
// Standard library only: HTTP/2 without TLS (h2c) from net/http, the gRPC framing
// (1 byte compressed flag, 4 bytes big-endian length, message) and the two protobuf
// messages (HealthCheckRequest{string service = 1}, HealthCheckResponse{enum status = 1})
// written by hand. Behaviour is steered from inside the container with files, so a test
// can flip it with `kubectl exec` or a probe's own timing:
//
//	/tmp/not-serving   every known service answers NOT_SERVING (2)
//	/tmp/slow          answers come after 3 s (for timeoutSeconds)
//
// Known services: "" and the names given with -service (repeatable); others get gRPC
// status NOT_FOUND, as grpc-go's health server does. Each call is logged to stdout with
// the service name and the caller's user agent.
package main

import (
	"encoding/binary"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"
)

type names []string

func (n *names) String() string     { return strings.Join(*n, ",") }
func (n *names) Set(v string) error { *n = append(*n, v); return nil }

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// service field (1, length-delimited) of a HealthCheckRequest.
func parseService(msg []byte) (string, error) {
	for len(msg) > 0 {
		key, n := binary.Uvarint(msg)
		if n <= 0 {
			return "", fmt.Errorf("bad field key")
		}
		msg = msg[n:]
		switch key & 7 {
		case 0:
			_, n = binary.Uvarint(msg)
			if n <= 0 {
				return "", fmt.Errorf("bad varint")
			}
			msg = msg[n:]
		case 2:
			size, n := binary.Uvarint(msg)
			if n <= 0 || uint64(len(msg)-n) < size {
				return "", fmt.Errorf("bad length")
			}
			if key>>3 == 1 {
				return string(msg[n : n+int(size)]), nil
			}
			msg = msg[n+int(size):]
		default:
			return "", fmt.Errorf("unsupported wire type %d", key&7)
		}
	}
	return "", nil
}

func main() {
	port := flag.Int("port", 9090, "port to listen on (all addresses)")
	var services names
	flag.Var(&services, "service", "a service name besides \"\" (repeatable)")
	flag.Parse()
	known := map[string]bool{"": true}
	for _, s := range services {
		known[s] = true
	}

	mux := http.NewServeMux()
	mux.HandleFunc("/grpc.health.v1.Health/Check", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/grpc")
		w.Header().Set("Trailer", "Grpc-Status, Grpc-Message")
		body, err := io.ReadAll(r.Body)
		if err != nil || len(body) < 5 || int(binary.BigEndian.Uint32(body[1:5])) != len(body)-5 {
			w.Header().Set("Grpc-Status", "13")
			w.Header().Set("Grpc-Message", "malformed request")
			return
		}
		service, err := parseService(body[5:])
		if err != nil {
			w.Header().Set("Grpc-Status", "13")
			w.Header().Set("Grpc-Message", err.Error())
			return
		}
		fmt.Printf("check service=%q ua=%q\n", service, r.Header.Get("User-Agent"))
		if exists("/tmp/slow") {
			time.Sleep(3 * time.Second)
		}
		if !known[service] {
			w.Header().Set("Grpc-Status", "5")
			w.Header().Set("Grpc-Message", "unknown service")
			return
		}
		status := byte(1) // SERVING
		if exists("/tmp/not-serving") {
			status = 2 // NOT_SERVING
		}
		w.WriteHeader(http.StatusOK)
		w.Write([]byte{0, 0, 0, 0, 2, 0x08, status})
		w.Header().Set("Grpc-Status", "0")
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/grpc")
		w.Header().Set("Trailer", "Grpc-Status, Grpc-Message")
		w.Header().Set("Grpc-Status", "12") // UNIMPLEMENTED
		w.Header().Set("Grpc-Message", "unknown method "+r.URL.Path)
	})

	var protocols http.Protocols
	protocols.SetUnencryptedHTTP2(true)
	server := &http.Server{Addr: fmt.Sprintf(":%d", *port), Handler: mux, Protocols: &protocols}
	fmt.Printf("grpc-health listening on :%d, services %q\n", *port, append([]string{""}, services...))
	if err := server.ListenAndServe(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
