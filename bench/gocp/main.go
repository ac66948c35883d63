// Command gocp is go-control-plane as a peer of lbcp for the fleet simulator
// (bench/fleetsim): one snapshot for the whole fleet in go-control-plane's snapshot
// cache, served over ADS (state of the world and delta) and the per-type services,
// and a REST surface that takes the same writes the simulator makes to lbcp's admin
// API (see intent.go). Nothing here is part of lbcp.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	clusterservice "github.com/envoyproxy/go-control-plane/envoy/service/cluster/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	endpointservice "github.com/envoyproxy/go-control-plane/envoy/service/endpoint/v3"
	listenerservice "github.com/envoyproxy/go-control-plane/envoy/service/listener/v3"
	routeservice "github.com/envoyproxy/go-control-plane/envoy/service/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
)

// The fleet's one snapshot key: every node gets the same configuration, as from lbcp.
const fleetKey = "fleet"

type fleetHash struct{}

func (fleetHash) ID(*core.Node) string { return fleetKey }

// Limits like lbcp's `server_options` (controlplane/xds/server/service.py).
const (
	keepaliveTime    = 10 * time.Second
	keepaliveTimeout = 5 * time.Second
	maxStreams       = 20_000 // lbcp's ServerLimits.max_streams (here per connection: one stream per client)
	maxRecvBytes     = 4 * 1024 * 1024
	maxSendBytes     = 128 * 1024 * 1024
	maxConnectionAge = 1800 * time.Second // gRPC adds +-10 % jitter, as gRPC core does for lbcp
	ageGrace         = 60 * time.Second
)

func main() {
	grpcPort := flag.Int("grpc-port", 18000, "xDS (gRPC) port on 127.0.0.1")
	httpPort := flag.Int("http-port", 18001, "REST port on 127.0.0.1 (/readyz, /v1/...)")
	flag.Parse()

	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()

	snapshots := cache.NewSnapshotCache(true, fleetHash{}, nil)
	pub := newPublisher(ctx, snapshots)
	in := newIntent(pub)
	if err := in.publish(); err != nil { // an empty but valid snapshot from the start
		log.Fatalf("gocp: initial snapshot: %v", err)
	}

	xds := server.NewServer(ctx, snapshots, nil)
	gs := grpc.NewServer(
		grpc.MaxConcurrentStreams(maxStreams),
		grpc.MaxRecvMsgSize(maxRecvBytes),
		grpc.MaxSendMsgSize(maxSendBytes),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			Time:                  keepaliveTime,
			Timeout:               keepaliveTimeout,
			MaxConnectionAge:      maxConnectionAge,
			MaxConnectionAgeGrace: ageGrace,
		}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 5 * time.Second, PermitWithoutStream: true}),
	)
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(gs, xds)
	clusterservice.RegisterClusterDiscoveryServiceServer(gs, xds)
	endpointservice.RegisterEndpointDiscoveryServiceServer(gs, xds)
	listenerservice.RegisterListenerDiscoveryServiceServer(gs, xds)
	routeservice.RegisterRouteDiscoveryServiceServer(gs, xds)

	gl, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", *grpcPort))
	if err != nil {
		log.Fatalf("gocp: %v", err)
	}
	hl, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", *httpPort))
	if err != nil {
		log.Fatalf("gocp: %v", err)
	}
	hs := &http.Server{Handler: in.routes(), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := gs.Serve(gl); err != nil {
			log.Printf("gocp: grpc: %v", err)
		}
	}()
	go func() {
		if err := hs.Serve(hl); err != nil && err != http.ErrServerClosed {
			log.Printf("gocp: http: %v", err)
		}
	}()
	log.Printf("gocp: xDS on 127.0.0.1:%d, REST on 127.0.0.1:%d", *grpcPort, *httpPort)

	<-ctx.Done()
	_ = hs.Close()
	gs.Stop()
	os.Exit(0)
}
