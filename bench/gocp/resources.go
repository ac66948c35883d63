package main

// The fleet's xDS resources, built to resemble what lbcp emits for the same intent
// (controlplane/xds/resources/): EDS clusters with lbcp's defaults (connect timeout,
// buffer limit, circuit breakers, update_merge_window 0), load assignments with the
// `envoy.lb` hash_key metadata, one listener per intent listener with lbcp's HTTP
// connection manager on RDS repeated over its 10 shard filter chains (and the source-port
// matcher and admission listener filter that go with them), and one route configuration
// per listener with one route per intent route. Not built: what lbcp adds only for
// features the simulator does not use (health checks, TLS, access logs, ...).

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sort"
	"time"

	xdscore "github.com/cncf/xds/go/xds/core/v3"
	matcher "github.com/cncf/xds/go/xds/type/matcher/v3"
	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	cors "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/cors/v3"
	fault "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	httplrl "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/local_ratelimit/v3"
	router "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	listenerlrl "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/local_ratelimit/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	netinputs "github.com/envoyproxy/go-control-plane/envoy/extensions/matching/common_inputs/network/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// lbcp's defaults (controlplane/xds/resources/_shared.py, intent model).
const (
	circuitLimit   = 1_000_000
	bufferLimit    = 32 * 1024
	connectTimeout = 5 * time.Second
	routeTimeout   = 15 * time.Second
	shards         = 10
)

// fleetResources are the xDS resources of an intent, by type, each in name order.
func fleetResources(s *state) (map[resource.Type][]types.Resource, error) {
	clusters := make([]types.Resource, 0, len(s.clusters))
	endpoints := make([]types.Resource, 0, len(s.clusters))
	for _, name := range sortedKeys(s.clusters) {
		c := s.clusters[name]
		clusters = append(clusters, clusterResource(name, c))
		endpoints = append(endpoints, loadAssignment(name, c))
	}
	byListener := map[string][]string{}
	for _, name := range sortedKeys(s.routes) {
		r := s.routes[name]
		byListener[r.Listener] = append(byListener[r.Listener], name)
	}
	listeners := make([]types.Resource, 0, len(s.listeners))
	routes := make([]types.Resource, 0, len(s.listeners))
	for _, name := range sortedKeys(s.listeners) {
		l, err := listenerResource(name, s.listeners[name])
		if err != nil {
			return nil, err
		}
		listeners = append(listeners, l)
		routes = append(routes, routeConfiguration(name, byListener[name], s.routes))
	}
	return map[resource.Type][]types.Resource{
		resource.ClusterType:  clusters,
		resource.EndpointType: endpoints,
		resource.ListenerType: listeners,
		resource.RouteType:    routes,
	}, nil
}

// digest identifies a type's resources by content (deterministic encoding, as the cache's
// delta versions do), so a type that did not change keeps its version.
func digest(items []types.Resource) (string, error) {
	h := sha256.New()
	for _, r := range items {
		b, err := cache.MarshalResource(r)
		if err != nil {
			return "", err
		}
		_, _ = fmt.Fprintf(h, "%s\x00%d\x00", cache.GetResourceName(r), len(b))
		_, _ = h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func ads() *core.ConfigSource {
	return &core.ConfigSource{
		ConfigSourceSpecifier: &core.ConfigSource_Ads{Ads: &core.AggregatedConfigSource{}},
		ResourceApiVersion:    core.ApiVersion_V3,
	}
}

func mustAny(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		panic(err)
	}
	return a
}

func clusterResource(name string, c *clusterIntent) *cluster.Cluster {
	out := &cluster.Cluster{
		Name:                          name,
		ClusterDiscoveryType:          &cluster.Cluster_Type{Type: cluster.Cluster_EDS},
		EdsClusterConfig:              &cluster.Cluster_EdsClusterConfig{EdsConfig: ads()},
		ConnectTimeout:                durationpb.New(connectTimeout),
		PerConnectionBufferLimitBytes: wrapperspb.UInt32(bufferLimit),
		LbPolicy:                      cluster.Cluster_ROUND_ROBIN,
		CommonLbConfig:                &cluster.Cluster_CommonLbConfig{UpdateMergeWindow: durationpb.New(0)},
		CircuitBreakers: &cluster.CircuitBreakers{Thresholds: []*cluster.CircuitBreakers_Thresholds{{
			Priority:           core.RoutingPriority_DEFAULT,
			MaxConnections:     wrapperspb.UInt32(circuitLimit),
			MaxPendingRequests: wrapperspb.UInt32(circuitLimit),
			MaxRequests:        wrapperspb.UInt32(circuitLimit),
		}}},
	}
	if c.LoadBalancer.Type == "maglev" {
		out.LbPolicy = cluster.Cluster_MAGLEV
		out.LbConfig = &cluster.Cluster_MaglevLbConfig_{
			MaglevLbConfig: &cluster.Cluster_MaglevLbConfig{TableSize: wrapperspb.UInt64(c.LoadBalancer.TableSize)},
		}
	}
	return out
}

func loadAssignment(name string, c *clusterIntent) *endpoint.ClusterLoadAssignment {
	out := &endpoint.ClusterLoadAssignment{ClusterName: name}
	if len(c.backends) == 0 {
		return out
	}
	group := &endpoint.LocalityLbEndpoints{}
	for _, bn := range sortedKeys(c.backends) {
		b := c.backends[bn]
		group.LbEndpoints = append(group.LbEndpoints, &endpoint.LbEndpoint{
			HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{Address: socketAddress(b.Address, b.Port)}},
			Metadata: &core.Metadata{FilterMetadata: map[string]*structpb.Struct{
				"envoy.lb": {Fields: map[string]*structpb.Value{"hash_key": structpb.NewStringValue(b.Name)}},
			}},
			LoadBalancingWeight: wrapperspb.UInt32(b.Weight),
		})
	}
	out.Endpoints = []*endpoint.LocalityLbEndpoints{group}
	return out
}

func socketAddress(address string, port uint32) *core.Address {
	return &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
		Address:       address,
		PortSpecifier: &core.SocketAddress_PortValue{PortValue: port},
	}}}
}

func httpConnectionManager(name string) *hcm.HttpConnectionManager {
	filter := func(n string, cfg proto.Message, disabled bool) *hcm.HttpFilter {
		return &hcm.HttpFilter{Name: n, ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: mustAny(cfg)}, Disabled: disabled}
	}
	return &hcm.HttpConnectionManager{
		StatPrefix: name,
		RouteSpecifier: &hcm.HttpConnectionManager_Rds{
			Rds: &hcm.Rds{ConfigSource: ads(), RouteConfigName: name},
		},
		// lbcp's per-route filters, disabled until a route turns them on, then the router.
		HttpFilters: []*hcm.HttpFilter{
			filter("envoy.filters.http.cors", &cors.Cors{}, true),
			filter("envoy.filters.http.fault", &fault.HTTPFault{}, true),
			filter("envoy.filters.http.local_ratelimit", &httplrl.LocalRateLimit{StatPrefix: "lbcp_route_rate_limit"}, true),
			filter("envoy.filters.http.router", &router.Router{}, false),
		},
		Http2ProtocolOptions: &core.Http2ProtocolOptions{
			MaxConcurrentStreams:        wrapperspb.UInt32(100),
			InitialStreamWindowSize:     wrapperspb.UInt32(64 * 1024),
			InitialConnectionWindowSize: wrapperspb.UInt32(1024 * 1024),
		},
		UseRemoteAddress:  wrapperspb.Bool(true),
		UpgradeConfigs:    []*hcm.HttpConnectionManager_UpgradeConfig{{UpgradeType: "websocket", Enabled: wrapperspb.Bool(false)}},
		StreamIdleTimeout: durationpb.New(300 * time.Second),
		CommonHttpProtocolOptions: &core.HttpProtocolOptions{
			IdleTimeout:                  durationpb.New(3600 * time.Second),
			HeadersWithUnderscoresAction: core.HttpProtocolOptions_REJECT_REQUEST,
		},
		RequestHeadersTimeout: durationpb.New(10 * time.Second),
	}
}

func chainAction(chain string) *xdscore.TypedExtensionConfig {
	return &xdscore.TypedExtensionConfig{Name: chain, TypedConfig: mustAny(wrapperspb.String(chain))}
}

func listenerResource(name string, l listenerIntent) (*listener.Listener, error) {
	hcmAny, err := anypb.New(httpConnectionManager(name))
	if err != nil {
		return nil, err
	}
	out := &listener.Listener{
		Name:                          name,
		Address:                       socketAddress(l.Address, l.Port),
		PerConnectionBufferLimitBytes: wrapperspb.UInt32(bufferLimit),
		ListenerFilters: []*listener.ListenerFilter{{
			Name: "lbcp.admission",
			ConfigType: &listener.ListenerFilter_ConfigDiscovery{ConfigDiscovery: &core.ExtensionConfigSource{
				ConfigSource: ads(),
				DefaultConfig: mustAny(&listenerlrl.LocalRateLimit{
					StatPrefix: "lbcp_admission",
					TokenBucket: &typev3.TokenBucket{
						MaxTokens:     4294967295,
						TokensPerFill: wrapperspb.UInt32(4294967295),
						FillInterval:  durationpb.New(time.Second),
					},
				}),
				TypeUrls: []string{"type.googleapis.com/envoy.extensions.filters.listener.local_ratelimit.v3.LocalRateLimit"},
			}},
		}},
	}
	// lbcp's shards: the same chain 10 times, chosen by the source port's tens digit.
	list := &matcher.Matcher_MatcherList{}
	for shard := 0; shard < shards; shard++ {
		chain := fmt.Sprintf("%s/s%d", name, shard)
		out.FilterChains = append(out.FilterChains, &listener.FilterChain{
			Name: chain,
			Filters: []*listener.Filter{{
				Name:       "envoy.filters.network.http_connection_manager",
				ConfigType: &listener.Filter_TypedConfig{TypedConfig: hcmAny},
			}},
		})
		if shard == 0 {
			continue
		}
		list.Matchers = append(list.Matchers, &matcher.Matcher_MatcherList_FieldMatcher{
			Predicate: &matcher.Matcher_MatcherList_Predicate{MatchType: &matcher.Matcher_MatcherList_Predicate_SinglePredicate_{
				SinglePredicate: &matcher.Matcher_MatcherList_Predicate_SinglePredicate{
					Input: &xdscore.TypedExtensionConfig{Name: "source_port", TypedConfig: mustAny(&netinputs.SourcePortInput{})},
					Matcher: &matcher.Matcher_MatcherList_Predicate_SinglePredicate_ValueMatch{ValueMatch: &matcher.StringMatcher{
						MatchPattern: &matcher.StringMatcher_SafeRegex{SafeRegex: &matcher.RegexMatcher{
							EngineType: &matcher.RegexMatcher_GoogleRe2{GoogleRe2: &matcher.RegexMatcher_GoogleRE2{}},
							Regex:      fmt.Sprintf("^[0-9]*%d[0-9]$", shard),
						}},
					}},
				},
			}},
			OnMatch: &matcher.Matcher_OnMatch{OnMatch: &matcher.Matcher_OnMatch_Action{Action: chainAction(chain)}},
		})
	}
	out.FilterChainMatcher = &matcher.Matcher{
		MatcherType: &matcher.Matcher_MatcherList_{MatcherList: list},
		OnNoMatch:   &matcher.Matcher_OnMatch{OnMatch: &matcher.Matcher_OnMatch_Action{Action: chainAction(name + "/s0")}},
	}
	return out, nil
}

func routeConfiguration(listenerName string, names []string, routes map[string]routeIntent) *route.RouteConfiguration {
	// lbcp's order: longest prefix first, then by name (all routes here are prefix routes).
	sort.SliceStable(names, func(i, j int) bool {
		pi, pj := len(routes[names[i]].Match.Prefix), len(routes[names[j]].Match.Prefix)
		if pi != pj {
			return pi > pj
		}
		return names[i] < names[j]
	})
	vh := &route.VirtualHost{Name: "*", Domains: []string{"*"}}
	for _, n := range names {
		r := routes[n]
		action := &route.RouteAction{Timeout: durationpb.New(routeTimeout)}
		if len(r.Backends) == 1 {
			action.ClusterSpecifier = &route.RouteAction_Cluster{Cluster: r.Backends[0].Cluster}
		} else {
			wc := &route.WeightedCluster{}
			for _, b := range r.Backends {
				wc.Clusters = append(wc.Clusters, &route.WeightedCluster_ClusterWeight{Name: b.Cluster, Weight: wrapperspb.UInt32(b.Weight)})
			}
			action.ClusterSpecifier = &route.RouteAction_WeightedClusters{WeightedClusters: wc}
		}
		for _, h := range r.HashPolicies {
			action.HashPolicy = append(action.HashPolicy, &route.RouteAction_HashPolicy{
				PolicySpecifier: &route.RouteAction_HashPolicy_Header_{Header: &route.RouteAction_HashPolicy_Header{HeaderName: h.Name}},
			})
		}
		vh.Routes = append(vh.Routes, &route.Route{
			Name:   n,
			Match:  &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: r.Match.Prefix}},
			Action: &route.Route_Route{Route: action},
		})
	}
	out := &route.RouteConfiguration{Name: listenerName}
	if len(vh.Routes) > 0 {
		out.VirtualHosts = []*route.VirtualHost{vh}
	}
	return out
}
