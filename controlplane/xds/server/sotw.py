"""State-of-the-world xDS on one stream (ADS or a single-type service).

Rules followed (envoy api/xds_protocol):
- a request whose response_nonce is not the latest sent is stale and ignored entirely;
- a request with error_detail answering the latest nonce is a NACK: recorded, and the
  rejected version is not sent again until intent changes it;
- CDS/LDS with no names (or "*") are wildcard; EDS/RDS are named, and a name that does
  not exist yet is sent when it appears;
- a reconnecting client's version_info counts as what it has: same version, no resend;
- at most one response per type in flight; CDS → EDS → LDS → RDS; after a CDS push that
  changes clusters, their endpoints are sent again (Envoy re-warms an updated cluster and
  waits for EDS before using it);
- CDS and LDS responses carry every resource (the protocol requires it); EDS and RDS (and
  lbcp's HashRing) are incremental in SotW too — omitting a resource says nothing about it
  — so they carry only the resources whose version changed since this stream last got them:
  an endpoint change costs one ClusterLoadAssignment, not all of them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from operator import attrgetter
from typing import Any

from controlplane.xds.resources import CLUSTER_TYPE, ENDPOINT_TYPE
from controlplane.xds.server.common import WILDCARD_TYPES, BaseStream, next_nonce
from controlplane.xds.snapshot import Entry, Snapshot, ld, set_version

_BODY_CACHE_SIZE = 256
_bodies: OrderedDict[tuple[str, str, int], bytes] = OrderedDict()


def _body(type_url: str, version: str, entries: Mapping[str, Entry], names: list[str]) -> bytes:
    """DiscoveryResponse bytes without the nonce: built once per (type, version, names sent),
    shared by every stream that needs the same response."""
    key = (type_url, version, hash(tuple(names)))
    body = _bodies.get(key)
    if body is None:
        # Many names: copy to a plain dict once for C-level reads below; a few (an endpoint
        # change): read them where they are, never copying a whole table for them.
        many = not isinstance(entries, dict) and 4 * len(names) >= len(entries)
        lookup = dict(entries.items()) if many else entries
        chunks = map(attrgetter("sotw_chunk"), map(lookup.__getitem__, names))
        body = ld(1, version.encode()) + b"".join(chunks) + ld(4, type_url.encode())
        _bodies[key] = body
        if len(_bodies) > _BODY_CACHE_SIZE:
            _bodies.popitem(last=False)
    else:
        _bodies.move_to_end(key)
    return body


class SotwStream(BaseStream):
    protocol = "sotw"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._cds_versions: dict[str, str] = {}
        # Named (incremental) types: the version of each resource this stream was last sent.
        self._sent: dict[str, dict[str, str]] = {}

    def on_request(self, req: Any, snap: Snapshot) -> None:
        type_url = req.type_url or self.only_type or ""
        self.check_names(type_url, len(req.resource_names))
        st = self.state(type_url)
        if req.response_nonce:
            if req.response_nonce != st.last_nonce:
                return  # stale: the client has not seen our latest response yet
            if req.HasField("error_detail") and (req.error_detail.code or req.error_detail.message):
                self.record_nack(type_url, st, req.error_detail.message, snap.revision)
            else:
                self.record_ack(type_url, st, req.version_info)
        elif req.version_info and not st.requested:
            # A reconnecting client already has this version: do not resend it.
            st.sent_version = st.acked_version = req.version_info
        st.requested = True
        names = set(req.resource_names)
        st.wildcard = "*" in names or (not names and type_url in WILDCARD_TYPES)
        st.names = names - {"*"}
        if type_url == ENDPOINT_TYPE:
            self.note_endpoint_names(st.names)
        self.poke(type_url)

    async def flush(self, snap: Snapshot, write: Callable[[bytes], Awaitable[None]]) -> None:
        for type_url, st in self.due_types(snap):
            entries = self.entries(snap, type_url)
            if st.wildcard:
                names = sorted(entries)
                version = self.type_version(snap, type_url)
            else:
                names = sorted(n for n in st.names if n in entries)
                if not names:
                    continue  # nothing to say yet; sent once it exists
                version = set_version(entries, names)
            owed = self._rewarm.intersection(names) if type_url == ENDPOINT_TYPE else set()
            if not owed and (version == st.sent_version or version == st.rejected_version):
                continue
            send = names
            if not st.wildcard:
                sent = self._sent.get(type_url, {})
                changed = [n for n in names if sent.get(n) != entries[n].version or n in owed]
                # Nothing changed but the set shrank (an unsubscribe): answer with the full set.
                send = changed or names
                self._sent[type_url] = {n: entries[n].version for n in names}
            nonce = next_nonce()
            body = _body(type_url, version, entries, send) + ld(5, nonce.encode())
            rewarm: set[str] = set()
            if type_url == CLUSTER_TYPE:
                if st.wildcard:  # every cluster: read without a call per name
                    versions = {n: e.version for n, e in entries.items()}
                else:
                    versions = {n: entries[n].version for n in names}
                rewarm = {n for n, v in versions.items() if self._cds_versions.get(n) not in (None, v)}
                self._cds_versions = versions
            await self._send(type_url, st, snap, nonce, version, body, send, rewarm, write)
        self._update_synced(snap)

    def _update_synced(self, snap: Snapshot) -> None:
        for type_url, st in self.types.items():
            if not st.requested:
                continue
            if st.in_flight is not None or st.acked_version != st.sent_version:
                return
            entries = self.entries(snap, type_url)
            if st.wildcard:
                if st.acked_version != self.type_version(snap, type_url):
                    return
            else:
                names = [n for n in st.names if n in entries]
                if names and st.acked_version != set_version(entries, names):
                    return
        if self.types and self.acked_revision != snap.revision:
            self.acked_revision = snap.revision
            self._emit("changed")
