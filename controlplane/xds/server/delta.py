"""Incremental (delta) xDS on one stream.

The server tracks what the client holds (`have`: name → version), seeded on reconnect by
`initial_resource_versions`, and sends only resources whose version differs, plus
`removed_resources` for what the client holds that no longer exists (or, once, for names it
subscribed to that do not exist). Subscriptions are processed on every request; ACK/NACK
only when the nonce is the latest. A NACKed version of a resource is not resent until intent
gives it a new version.

A push costs the stream what changed: each diff looks only at the names whose entries changed
since the table it last compared against (the snapshot's tables record that), plus the names
its own requests touched since; it compares everything only after its first request, a
wildcard toggle, or when the record does not reach back far enough.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from controlplane.xds.resources import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE
from controlplane.xds.server.common import WILDCARD_TYPES, BaseStream, TypeState, next_nonce
from controlplane.xds.snapshot import Entry, Snapshot, Table, ld

# Types a node may be served variants of its own (listeners, route configurations).
_VARIANT_TYPES = (LISTENER_TYPE, ROUTE_TYPE)


class DeltaStream(BaseStream):
    protocol = "delta"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending: dict[str, dict[str, str]] = {}  # type -> versions in the in-flight response
        # Clusters the client holds that may still lack an endpoints subscription (make
        # before break, `eds_owed`): added as clusters are sent, dropped once looked at.
        self._unwarmed: set[str] = set()

    def on_request(self, req: Any, snap: Snapshot) -> None:
        type_url = req.type_url or self.only_type or ""
        st = self.state(type_url)
        self._check_bounds(type_url, st, req)
        if not st.requested:
            st.requested = True
            st.full = True
            st.have.update(req.initial_resource_versions)
            if type_url == CLUSTER_TYPE:
                self._unwarmed.update(req.initial_resource_versions)
            if type_url in WILDCARD_TYPES and not req.resource_names_subscribe:
                st.wildcard = True  # legacy wildcard: first request with no names
        if req.response_nonce and req.response_nonce == st.last_nonce and st.in_flight is not None:
            if req.HasField("error_detail") and (req.error_detail.code or req.error_detail.message):
                # The client kept its old versions; remember the rejected ones so they are
                # not resent (`have` keeps them too, so the diff stays quiet) until intent
                # gives the resource a new version.
                for name, version in self._pending.get(type_url, {}).items():
                    st.rejected[name] = version
                    st.recheck.add(name)
                self.record_nack(type_url, st, req.error_detail.message, snap.revision)
            else:
                self.record_ack(type_url, st, st.sent_version or "")
            self._pending.pop(type_url, None)
        for name in req.resource_names_subscribe:
            if name == "*":
                st.full = st.full or not st.wildcard
                st.wildcard = True
            else:
                st.names.add(name)
                st.missing_reported.discard(name)
                st.recheck.add(name)
        for name in req.resource_names_unsubscribe:
            if name == "*":
                st.full = st.full or st.wildcard
                st.wildcard = False
            else:
                st.names.discard(name)
                st.have.pop(name, None)
                st.missing_reported.discard(name)
                st.recheck.add(name)
        if type_url == ENDPOINT_TYPE and (req.resource_names_subscribe or req.resource_names_unsubscribe):
            self._note_endpoint_requests(st, req.resource_names_subscribe, req.resource_names_unsubscribe)
        self.poke(type_url)

    def _note_endpoint_requests(self, st: TypeState, subscribe: Iterable[str], unsubscribe: Iterable[str]) -> None:
        """Endpoint subscriptions changed: find the health gate, and note the clusters whose
        endpoints the client no longer follows (looking at the request's names only)."""
        if self.gate is not None and self.gate not in st.names:
            self.note_endpoint_names(st.names)  # its gate went: look for another (rare)
        elif self.gate is None:
            self.note_endpoint_names({n for n in subscribe if n in st.names})
        cds = self.types.get(CLUSTER_TYPE)
        if cds is not None:
            self._unwarmed.update(n for n in unsubscribe if n in cds.have)

    def _check_bounds(self, type_url: str, st: TypeState, req: Any) -> None:
        subscribe = req.resource_names_subscribe
        held = len(st.names) + len(subscribe)
        if held > self.bounds.max_names_per_type:  # exact count only when the cheap bound is over
            held = len(st.names.union(subscribe).difference(req.resource_names_unsubscribe, ("*",)))
        self.check_names(type_url, max(held, len(req.initial_resource_versions)))

    def _diff(
        self, type_url: str, snap: Snapshot, entries: Mapping[str, Entry]
    ) -> tuple[list[str], list[str], list[str]]:
        """What to send, what to say is removed, and which subscribed names to report missing;
        records what it compared against."""
        st = self.types[type_url]
        base = snap.of(type_url)
        names = None
        variants = type_url in _VARIANT_TYPES and entries is not base
        if not st.full and not variants and isinstance(base, Table):
            names = base.changed_since(st.evaluated)
        if names is None:
            out = self._full_diff(st, snap, type_url, entries)
        else:
            names |= st.recheck
            names |= st.waiting
            if type_url == ENDPOINT_TYPE:
                names |= self._rewarm
                if self.gate is not None:
                    names.add(self.gate)
            out = self._names_diff(st, snap, type_url, entries, names)
        # Listeners and route configurations of this node's own (variants: its public address,
        # its shed shards, its share of fleet rate limits) are not the table's: the table's
        # record cannot say when they stop being owed (a shed ends, the last listener binding
        # the public address stops), so the next diff after one compares everything.
        st.evaluated, st.full = (None if variants else base), False
        st.recheck = set()
        return out

    def _names_diff(
        self, st: TypeState, snap: Snapshot, type_url: str, entries: Mapping[str, Entry], names: set[str]
    ) -> tuple[list[str], list[str], list[str]]:
        rewarm = self._rewarm if type_url == ENDPOINT_TYPE else set()
        pending = snap.pending.get(type_url, ())
        send, removed, missing = [], [], []
        st.waiting = set()
        for n in names:
            e = entries.get(n)
            if e is not None and (st.wildcard or n in st.names):
                rejected = st.rejected.get(n) == e.version
                if rejected:
                    st.stuck.add(n)
                else:
                    st.stuck.discard(n)
                    if st.have.get(n) != e.version or n in rewarm:
                        send.append(n)
                continue
            st.stuck.discard(n)
            if n in st.have:
                removed.append(n)
            elif e is None and n in st.names and n not in st.missing_reported:
                if n in pending:
                    st.waiting.add(n)  # being built: looked at again
                else:
                    missing.append(n)
        send.sort()
        removed.sort()
        missing.sort()
        return send, removed, missing

    def _full_diff(
        self, st: TypeState, snap: Snapshot, type_url: str, entries: Mapping[str, Entry]
    ) -> tuple[list[str], list[str], list[str]]:
        # What the client wants of `entries`, as a plain dict (read below without a call per name).
        interest = dict(entries.items()) if st.wildcard else {}
        interest.update((n, e) for n in st.names if (e := entries.get(n)) is not None)
        rewarm = self._rewarm if type_url == ENDPOINT_TYPE else set()
        have, rejected = st.have, st.rejected
        send = sorted(
            n for n, e in interest.items() if (have.get(n) != e.version or n in rewarm) and rejected.get(n) != e.version
        )
        removed = sorted(n for n in st.have if n not in entries or (not st.wildcard and n not in st.names))
        pending = snap.pending.get(type_url, ())
        unknown = [n for n in st.names if n not in entries and n not in st.have and n not in st.missing_reported]
        st.waiting = {n for n in unknown if n in pending}
        missing = sorted(n for n in unknown if n not in pending)
        st.stuck = {n for n, e in interest.items() if rejected.get(n) == e.version} if rejected else set()
        return send, removed, missing

    async def flush(self, snap: Snapshot, write: Callable[[bytes], Awaitable[None]]) -> None:
        for type_url, st in self.due_types(snap):
            entries = self.entries(snap, type_url)
            send, removed, missing = self._diff(type_url, snap, entries)
            st.evaluated_version = self.type_version(snap, type_url)
            # A fresh client's first wildcard request is answered even when there is nothing:
            # Envoy's initialisation waits for a first CDS/LDS response (else it sits out
            # initial_fetch_timeout). A reconnecting client that declared what it holds
            # (initial_resource_versions) is past initialisation and gets nothing.
            first_wildcard = st.wildcard and st.pushes == 0 and not st.have
            if not send and not removed and not missing and not first_wildcard:
                continue
            nonce = next_nonce()
            parts = [ld(1, str(snap.revision).encode())]
            parts += [entries[n].delta_chunk for n in send]
            parts.append(ld(4, type_url.encode()))
            parts += [ld(6, n.encode()) for n in removed + missing]
            parts.append(ld(5, nonce.encode()))
            body = b"".join(parts)
            self._pending[type_url] = {n: entries[n].version for n in send}
            for n in send:
                st.have[n] = entries[n].version
            for n in removed:
                st.have.pop(n, None)
            # A subscribed name just removed has been reported gone: say so once, not again.
            st.missing_reported.update(missing, (n for n in removed if n in st.names))
            clusters = snap.references.get(CLUSTER_TYPE, {})
            rewarm = {n for n in send if n in clusters}
            if type_url == CLUSTER_TYPE:
                self._unwarmed.update(rewarm)
                self._unwarmed.difference_update(removed)
            await self._send(type_url, st, snap, nonce, str(snap.revision), body, send, rewarm, write)
        self._update_synced(snap)

    def eds_owed(self, snap: Snapshot) -> bool:
        """Clusters the client has that need endpoints it has not subscribed to yet: only the
        clusters sent (or declared) since it last looked can be such."""
        eds, cds = self.types.get(ENDPOINT_TYPE), self.types.get(CLUSTER_TYPE)
        if eds is None or not eds.requested or cds is None:
            return False
        needed = snap.references.get(CLUSTER_TYPE, {})
        for n in list(self._unwarmed):
            if n in cds.have and n in needed and n not in eds.names:
                return True
            self._unwarmed.discard(n)
        return False

    def _update_synced(self, snap: Snapshot) -> None:
        if any(st.in_flight is not None for st in self.types.values()):
            return  # not synced while a response awaits its ACK (checked before any diff)
        for type_url, st in self.types.items():
            if not st.requested:
                continue
            # Synced: the last diff saw this version with nothing left to send, no request
            # since, and nothing it holds rejected.
            if st.full or st.recheck or st.stuck or st.evaluated_version != self.type_version(snap, type_url):
                return
            if type_url == ENDPOINT_TYPE and (
                self._gate_changed(snap) or any(st.wildcard or n in st.names for n in self._rewarm)
            ):
                return
        if self.types and self.acked_revision != snap.revision:
            self.acked_revision = snap.revision
            self._emit("changed")
