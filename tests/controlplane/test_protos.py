"""The generated code under controlplane/gen/ is exactly what `make protos` builds from protos/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_current(tmp_path: Path) -> None:
    protos = sorted(str(p.relative_to(ROOT / "protos")) for p in (ROOT / "protos").rglob("*.proto"))
    assert protos, "no .proto files under protos/"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-Iprotos",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            *protos,
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.py*"))
    assert generated
    stale = [str(p) for p in generated if (ROOT / "controlplane/gen" / p).read_bytes() != (tmp_path / p).read_bytes()]
    assert not stale, f"run `make protos`: {stale} differ from protos/"


def test_hash_ring_type_url_matches_the_proto() -> None:
    from controlplane.gen.lbcp.v1 import ring_pb2
    from controlplane.xds.resources import HASH_RING_TYPE

    assert HASH_RING_TYPE == "type.googleapis.com/" + ring_pb2.HashRing.DESCRIPTOR.full_name
