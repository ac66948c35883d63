"""`lbcp frontdoor render` says (on stderr) which VIP and port it rendered for, and which of
them are stand-in defaults; a maglev map (1021 slots) is written one entry per line, and nft
still takes the ruleset."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from tests.api.test_cli import lbcp
from tests.conftest import acked_client, wait_for


async def test_render_says_what_it_is_for_and_writes_big_maps_one_entry_a_line(
    serve_api: Any, make_replica: Any, store: Any, tmp_path: Path
) -> None:
    from controlplane.intent.model import Cluster

    replica = await make_replica("fd", front_cidrs=("edge=127.0.0.0/8",), front_unprobed=("edge",))
    await store.put(Cluster(name="web"))
    url = await serve_api()
    clients = [await acked_client(replica, f"edge-{i}", public_address=f"127.0.0.{30 + i}") for i in range(2)]
    try:

        async def both() -> bool:
            r = await lbcp(url, "frontdoor", "render", "--format", "json", "--fleet", "edge")
            return r.out.count('"node_id"') == 2

        await wait_for(both, 20, "both clients in service")
        r = await lbcp(url, "frontdoor", "render", "--format", "nftables", "--fleet", "edge", "--mode", "maglev")
        assert r.code == 0, r
        assert r.err == (
            "lbcp: nftables rendered for VIP 198.51.100.1 (default; set with --vip), port 443 (default; set with"
            " --port)\n"
        ), r.err
        lines = r.out.splitlines()
        assert max(len(line) for line in lines) < 100, max(lines, key=len)[:200]
        entries = [line.strip() for line in lines if re.fullmatch(r"\s+\d+ : 127\.0\.0\.3[01],?", line)]
        assert len(entries) == 1021 and entries[0].startswith("0 : ") and entries[-1].startswith("1020 : ")
        assert any(line.endswith("map {") and "ip daddr 198.51.100.1 tcp dport 443" in line for line in lines)
        nft = shutil.which("nft") or shutil.which("nft", path="/usr/sbin:/sbin")
        assert nft, "nft is not installed: `make` installs it (Debian: nftables)"
        f = tmp_path / "maglev.nft"
        f.write_text(r.out)
        checked = subprocess.run([nft, "--check", "-f", str(f)], capture_output=True, text=True, timeout=30)
        assert checked.returncode == 0, checked.stderr

        # Small maps stay on one line; given values are said as given.
        r = await lbcp(url, "frontdoor", "render", "--format", "nftables", "--fleet", "edge", "--vip", "10.1.2.3",
                       "--port", "8443")  # fmt: skip
        assert r.err == "lbcp: nftables rendered for VIP 10.1.2.3, port 8443\n", r.err
        assert (
            "ip daddr 10.1.2.3 tcp dport 8443 dnat to jhash ip saddr mod 2 map { 0 : 127.0.0.30, 1 : 127.0.0.31 }"
            in r.out
        )
        r = await lbcp(url, "frontdoor", "render", "--format", "iptables", "--fleet", "edge", "--vip", "10.1.2.3")
        assert r.err == "lbcp: iptables rendered for VIP 10.1.2.3, port 443 (default; set with --port)\n", r.err
        assert "-A PREROUTING -d 10.1.2.3/32 -p tcp --dport 443" in r.out

        # --watch into a file: the same text, the note once.
        out = tmp_path / "fd.nft"
        r = await lbcp(url, "frontdoor", "render", "--format", "nftables", "--fleet", "edge", "--mode", "maglev",
                       "--watch", "--count", "1", "-o", str(out))  # fmt: skip
        assert r.code == 0 and r.err.count("lbcp: nftables rendered for") == 1, r
        assert out.read_text().count("\n") > 1021
    finally:
        for c in clients:
            await c.close()


async def test_render_help_says_what_vip_and_port_are(serve_api: Any) -> None:
    url = await serve_api()
    r = await lbcp(url, "frontdoor", "render", "--help")
    text = " ".join(r.out.split())
    assert "--vip VIP iptables, nftables: the virtual IP clients connect to" in text, r.out
    assert "(default 198.51.100.1, a documentation address: give yours)" in text
    assert "--port PORT iptables, nftables: the TCP port of the VIP" in text and "(default 443)" in text
