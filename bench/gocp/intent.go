package main

// The REST surface: as much of lbcp's admin API as the fleet simulator's scenarios use
// (bench/fleetsim/scenarios.py): /readyz, POST /v1/batch, PUT /v1/clusters/{c},
// PUT /v1/clusters/{c}/backends[/{name}], DELETE of a backend. The intent lives in
// memory. Every accepted write builds the fleet's next snapshot (version counter),
// checks it with Consistent() and answers 2xx; a publisher goroutine then hands the
// newest snapshot to the cache (SetSnapshot), so the simulator's "2xx -> the last client
// has it" covers the fan-out, as it does for lbcp (whose 2xx means "written to etcd").

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"maps"
	"net/http"
	"strconv"
	"sync"

	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
)

type backend struct {
	Name    string `json:"name"`
	Address string `json:"address"`
	Port    uint32 `json:"port"`
	Weight  uint32 `json:"weight"`
}

type loadBalancer struct {
	Type      string `json:"type"`
	TableSize uint64 `json:"table_size"`
}

type clusterIntent struct {
	LoadBalancer loadBalancer `json:"load_balancer"`
	backends     map[string]backend
}

type listenerIntent struct {
	Address string `json:"address"`
	Port    uint32 `json:"port"`
}

type routeBackend struct {
	Cluster string `json:"cluster"`
	Weight  uint32 `json:"weight"`
}

type hashPolicy struct {
	Type string `json:"type"`
	Name string `json:"name"`
}

type routeIntent struct {
	Listener string `json:"listener"`
	Match    struct {
		Prefix string `json:"prefix"`
	} `json:"match"`
	Backends     []routeBackend `json:"backends"`
	HashPolicies []hashPolicy   `json:"hash_policies"`
}

type state struct {
	clusters  map[string]*clusterIntent
	listeners map[string]listenerIntent
	routes    map[string]routeIntent
}

func (s *state) clone() *state {
	out := &state{
		clusters:  make(map[string]*clusterIntent, len(s.clusters)),
		listeners: maps.Clone(s.listeners),
		routes:    maps.Clone(s.routes),
	}
	for n, c := range s.clusters {
		cc := *c
		cc.backends = maps.Clone(c.backends)
		out.clusters[n] = &cc
	}
	return out
}

type intent struct {
	mu      sync.Mutex
	cur     *state
	version uint64 // of the last snapshot
	pub     *publisher
	// Each type's version and content digest: a type keeps its version while its content
	// stays the same (as lbcp's per-type versions do), so a state-of-the-world client is
	// sent only the types that changed, not every type on every snapshot.
	typeVersions map[resource.Type]string
	typeDigests  map[resource.Type]string
}

func newIntent(pub *publisher) *intent {
	return &intent{
		cur:          &state{clusters: map[string]*clusterIntent{}, listeners: map[string]listenerIntent{}, routes: map[string]routeIntent{}},
		pub:          pub,
		typeVersions: map[resource.Type]string{},
		typeDigests:  map[resource.Type]string{},
	}
}

// publish builds the snapshot of the current intent and offers it to the cache.
func (in *intent) publish() error {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.commit(in.cur)
}

// write applies `change` to a copy of the intent; if the result makes a consistent
// snapshot it becomes the intent and the snapshot is offered to the cache.
func (in *intent) write(change func(*state) error) (uint64, error) {
	in.mu.Lock()
	defer in.mu.Unlock()
	next := in.cur.clone()
	if err := change(next); err != nil {
		return 0, err
	}
	if err := in.commit(next); err != nil {
		return 0, err
	}
	return in.version, nil
}

func (in *intent) commit(next *state) error {
	byType, err := fleetResources(next)
	if err != nil {
		return err
	}
	version := strconv.FormatUint(in.version+1, 10)
	snap, err := cache.NewSnapshot(version, byType)
	if err != nil {
		return err
	}
	versions, digests := map[resource.Type]string{}, map[resource.Type]string{}
	for t, items := range byType {
		d, err := digest(items)
		if err != nil {
			return err
		}
		digests[t], versions[t] = d, version
		if d == in.typeDigests[t] {
			versions[t] = in.typeVersions[t]
		}
		snap.Resources[cache.GetResponseType(t)].Version = versions[t]
	}
	if err := snap.Consistent(); err != nil {
		return fmt.Errorf("inconsistent snapshot: %w", err)
	}
	in.version++
	in.cur, in.typeVersions, in.typeDigests = next, versions, digests
	in.pub.offer(snap)
	return nil
}

// -- the write operations ---------------------------------------------------------------

func putCluster(s *state, name string, body json.RawMessage) error {
	c := &clusterIntent{}
	if len(body) > 0 {
		if err := json.Unmarshal(body, c); err != nil {
			return err
		}
	}
	switch c.LoadBalancer.Type {
	case "":
		c.LoadBalancer.Type = "round_robin"
	case "round_robin", "maglev":
	default:
		return fmt.Errorf("load balancer %q: this peer knows round_robin and maglev", c.LoadBalancer.Type)
	}
	if c.LoadBalancer.Type == "maglev" && c.LoadBalancer.TableSize == 0 {
		c.LoadBalancer.TableSize = 65537
	}
	if old, ok := s.clusters[name]; ok {
		c.backends = old.backends
	} else {
		c.backends = map[string]backend{}
	}
	s.clusters[name] = c
	return nil
}

func validBackend(b backend) (backend, error) {
	if b.Name == "" || b.Address == "" || b.Port == 0 || b.Port > 65535 {
		return b, fmt.Errorf("backend %q: name, address and port (1-65535) are required", b.Name)
	}
	if b.Weight == 0 {
		b.Weight = 1
	}
	return b, nil
}

func putBackend(s *state, cluster, name string, body json.RawMessage) error {
	c, ok := s.clusters[cluster]
	if !ok {
		return notFound{"cluster " + cluster}
	}
	var b backend
	if err := json.Unmarshal(body, &b); err != nil {
		return err
	}
	b.Name = name
	b, err := validBackend(b)
	if err != nil {
		return err
	}
	c.backends[name] = b
	return nil
}

func replaceBackends(s *state, cluster string, body json.RawMessage) error {
	c, ok := s.clusters[cluster]
	if !ok {
		return notFound{"cluster " + cluster}
	}
	var list []backend
	if err := json.Unmarshal(body, &list); err != nil {
		return err
	}
	c.backends = make(map[string]backend, len(list))
	for _, b := range list {
		b, err := validBackend(b)
		if err != nil {
			return err
		}
		c.backends[b.Name] = b
	}
	return nil
}

func deleteBackend(s *state, cluster, name string) error {
	c, ok := s.clusters[cluster]
	if !ok {
		return notFound{"cluster " + cluster}
	}
	if _, ok := c.backends[name]; !ok {
		return notFound{"backend " + name}
	}
	delete(c.backends, name)
	return nil
}

func putListener(s *state, name string, body json.RawMessage) error {
	l := listenerIntent{Address: "0.0.0.0"}
	if err := json.Unmarshal(body, &l); err != nil {
		return err
	}
	if l.Port == 0 || l.Port > 65535 {
		return fmt.Errorf("listener %q: port 1-65535 is required", name)
	}
	s.listeners[name] = l
	return nil
}

func putRoute(s *state, name string, body json.RawMessage) error {
	var r routeIntent
	if err := json.Unmarshal(body, &r); err != nil {
		return err
	}
	if _, ok := s.listeners[r.Listener]; !ok {
		return notFound{"listener " + r.Listener}
	}
	if len(r.Backends) == 0 {
		return fmt.Errorf("route %q: backends are required", name)
	}
	for i, b := range r.Backends {
		if _, ok := s.clusters[b.Cluster]; !ok {
			return notFound{"cluster " + b.Cluster}
		}
		if b.Weight == 0 {
			r.Backends[i].Weight = 1
		}
	}
	for _, h := range r.HashPolicies {
		if h.Type != "header" || h.Name == "" {
			return fmt.Errorf("route %q: this peer knows header hash policies only", name)
		}
	}
	if r.Match.Prefix == "" {
		r.Match.Prefix = "/"
	}
	s.routes[name] = r
	return nil
}

type operation struct {
	Op      string          `json:"op"`
	Kind    string          `json:"kind"`
	Name    string          `json:"name"`
	Cluster string          `json:"cluster"`
	Body    json.RawMessage `json:"body"`
}

func applyOp(s *state, o operation) error {
	switch {
	case o.Op == "put" && o.Kind == "cluster":
		return putCluster(s, o.Name, o.Body)
	case o.Op == "put" && o.Kind == "backend":
		return putBackend(s, o.Cluster, o.Name, o.Body)
	case o.Op == "put" && o.Kind == "listener":
		return putListener(s, o.Name, o.Body)
	case o.Op == "put" && o.Kind == "route":
		return putRoute(s, o.Name, o.Body)
	case o.Op == "replace_backends":
		return replaceBackends(s, o.Cluster, o.Body)
	case o.Op == "delete" && o.Kind == "backend":
		return deleteBackend(s, o.Cluster, o.Name)
	}
	return fmt.Errorf("operation %q on %q: not served by this peer", o.Op, o.Kind)
}

// -- HTTP -------------------------------------------------------------------------------

type notFound struct{ what string }

func (e notFound) Error() string { return e.what + " not found" }

func (in *intent) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("POST /v1/batch", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Operations []operation `json:"operations"`
		}
		if !decode(w, r, &req) {
			return
		}
		in.answer(w, func(s *state) error {
			for i, o := range req.Operations {
				if err := applyOp(s, o); err != nil {
					return fmt.Errorf("operation %d: %w", i, err)
				}
			}
			return nil
		})
	})
	mux.HandleFunc("PUT /v1/clusters/{cluster}", func(w http.ResponseWriter, r *http.Request) {
		var body json.RawMessage
		if decode(w, r, &body) {
			in.answer(w, func(s *state) error { return putCluster(s, r.PathValue("cluster"), body) })
		}
	})
	mux.HandleFunc("PUT /v1/clusters/{cluster}/backends", func(w http.ResponseWriter, r *http.Request) {
		var body json.RawMessage
		if decode(w, r, &body) {
			in.answer(w, func(s *state) error { return replaceBackends(s, r.PathValue("cluster"), body) })
		}
	})
	mux.HandleFunc("PUT /v1/clusters/{cluster}/backends/{name}", func(w http.ResponseWriter, r *http.Request) {
		var body json.RawMessage
		if decode(w, r, &body) {
			in.answer(w, func(s *state) error { return putBackend(s, r.PathValue("cluster"), r.PathValue("name"), body) })
		}
	})
	mux.HandleFunc("DELETE /v1/clusters/{cluster}/backends/{name}", func(w http.ResponseWriter, r *http.Request) {
		in.answer(w, func(s *state) error { return deleteBackend(s, r.PathValue("cluster"), r.PathValue("name")) })
	})
	return mux
}

func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<20)).Decode(v); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return false
	}
	return true
}

func (in *intent) answer(w http.ResponseWriter, change func(*state) error) {
	version, err := in.write(change)
	var nf notFound
	switch {
	case errors.As(err, &nf):
		http.Error(w, err.Error(), http.StatusNotFound)
	case err != nil:
		http.Error(w, err.Error(), http.StatusUnprocessableEntity)
	default:
		w.Header().Set("content-type", "application/json")
		_, _ = fmt.Fprintf(w, "{\"version\": %d}\n", version)
	}
}

// -- the publisher ----------------------------------------------------------------------

// publisher sets the newest offered snapshot in the cache, one at a time; snapshots
// offered while it is setting one are coalesced into the newest.
type publisher struct {
	mu    sync.Mutex
	next  *cache.Snapshot
	kick  chan struct{}
	cache cache.SnapshotCache
}

func newPublisher(ctx context.Context, c cache.SnapshotCache) *publisher {
	p := &publisher{kick: make(chan struct{}, 1), cache: c}
	go p.run(ctx)
	return p
}

func (p *publisher) offer(s *cache.Snapshot) {
	p.mu.Lock()
	p.next = s
	p.mu.Unlock()
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

func (p *publisher) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.kick:
		}
		p.mu.Lock()
		s := p.next
		p.next = nil
		p.mu.Unlock()
		if s == nil {
			continue
		}
		if err := p.cache.SetSnapshot(ctx, fleetKey, s); err != nil {
			log.Printf("gocp: SetSnapshot: %v", err)
		}
	}
}
