"""The xDS gRPC server: SotW and delta stream logic (one module each) and the gRPC service."""

from controlplane.xds.server.admission import ServerLimits
from controlplane.xds.server.common import BaseStream, NodeInfo, StreamObserver
from controlplane.xds.server.service import XdsService

__all__ = ["BaseStream", "NodeInfo", "ServerLimits", "StreamObserver", "XdsService"]
