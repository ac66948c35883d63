"""Incremental (delta) xDS on one stream.

The server tracks what the client holds (`have`: name → version), seeded on reconnect by
`initial_resource_versions`, and sends only resources whose version differs, plus
`removed_resources` for what the client holds that no longer exists (or, once, for names it
subscribed to that do not exist). Subscriptions are processed on every request; ACK/NACK
only when the nonce is the latest. A NACKed version of a resource is not resent until intent
gives it a new version.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from controlplane.xds.resources import CLUSTER_TYPE, ENDPOINT_TYPE
from controlplane.xds.server.common import WILDCARD_TYPES, BaseStream, TypeState, next_nonce
from controlplane.xds.snapshot import Snapshot, ld


class DeltaStream(BaseStream):
    protocol = "delta"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending: dict[str, dict[str, str]] = {}  # type -> versions in the in-flight response

    def on_request(self, req: Any, snap: Snapshot) -> None:
        type_url = req.type_url or self.only_type or ""
        st = self.state(type_url)
        self._check_bounds(type_url, st, req)
        if not st.requested:
            st.requested = True
            st.have.update(req.initial_resource_versions)
            if type_url in WILDCARD_TYPES and not req.resource_names_subscribe:
                st.wildcard = True  # legacy wildcard: first request with no names
        if req.response_nonce and req.response_nonce == st.last_nonce and st.in_flight is not None:
            if req.HasField("error_detail") and (req.error_detail.code or req.error_detail.message):
                # The client kept its old versions; remember the rejected ones so they are
                # not resent (`have` keeps them too, so the diff stays quiet) until intent
                # gives the resource a new version.
                for name, version in self._pending.get(type_url, {}).items():
                    st.rejected[name] = version
                self.record_nack(type_url, st, req.error_detail.message, snap.revision)
            else:
                self.record_ack(type_url, st, st.sent_version or "")
            self._pending.pop(type_url, None)
        for name in req.resource_names_subscribe:
            if name == "*":
                st.wildcard = True
            else:
                st.names.add(name)
                st.missing_reported.discard(name)
        for name in req.resource_names_unsubscribe:
            if name == "*":
                st.wildcard = False
            else:
                st.names.discard(name)
                st.have.pop(name, None)
                st.missing_reported.discard(name)
        if type_url == ENDPOINT_TYPE and (req.resource_names_subscribe or req.resource_names_unsubscribe):
            self.note_endpoint_names(st.names)
        self.poke(type_url)

    def _check_bounds(self, type_url: str, st: TypeState, req: Any) -> None:
        subscribe = req.resource_names_subscribe
        held = len(st.names) + len(subscribe)
        if held > self.bounds.max_names_per_type:  # exact count only when the cheap bound is over
            held = len(st.names.union(subscribe).difference(req.resource_names_unsubscribe, ("*",)))
        self.check_names(type_url, max(held, len(req.initial_resource_versions)))

    def _diff(self, type_url: str, snap: Snapshot) -> tuple[list[str], list[str], list[str]]:
        st = self.types[type_url]
        entries = self.entries(snap, type_url)
        interest = set(entries) if st.wildcard else set()
        interest |= {n for n in st.names if n in entries}
        rewarm = self._rewarm if type_url == ENDPOINT_TYPE else set()
        send = sorted(
            n
            for n in interest
            if (st.have.get(n) != entries[n].version or n in rewarm) and st.rejected.get(n) != entries[n].version
        )
        removed = sorted(n for n in st.have if n not in entries or (not st.wildcard and n not in st.names))
        pending = snap.pending.get(type_url, ())
        missing = sorted(
            n
            for n in st.names
            if n not in entries and n not in st.have and n not in st.missing_reported and n not in pending
        )
        return send, removed, missing

    async def flush(self, snap: Snapshot, write: Callable[[bytes], Awaitable[None]]) -> None:
        for type_url, st in self.due_types(snap):
            send, removed, missing = self._diff(type_url, snap)
            # A fresh client's first wildcard request is answered even when there is nothing:
            # Envoy's initialisation waits for a first CDS/LDS response (else it sits out
            # initial_fetch_timeout). A reconnecting client that declared what it holds
            # (initial_resource_versions) is past initialisation and gets nothing.
            first_wildcard = st.wildcard and st.pushes == 0 and not st.have
            if not send and not removed and not missing and not first_wildcard:
                continue
            entries = self.entries(snap, type_url)
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
            rewarm = {n for n in send if n in snap.references.get(CLUSTER_TYPE, {})}
            await self._send(type_url, st, snap, nonce, str(snap.revision), body, send, rewarm, write)
        self._update_synced(snap)

    def _update_synced(self, snap: Snapshot) -> None:
        if any(st.in_flight is not None for st in self.types.values()):
            return  # not synced while a response awaits its ACK (checked before any diff)
        for type_url, st in self.types.items():
            if not st.requested:
                continue
            send, removed, _ = self._diff(type_url, snap)
            if send or removed:
                return
            entries = self.entries(snap, type_url)
            if any(st.rejected.get(n) == e.version for n, e in entries.items() if n in st.names or st.wildcard):
                return
        if self.types and self.acked_revision != snap.revision:
            self.acked_revision = snap.revision
            self._emit("changed")
