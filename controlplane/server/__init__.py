"""The xDS gRPC server: SotW and delta stream logic (one module each) and the gRPC service."""

from .common import BaseStream, NodeInfo, StreamObserver
from .service import ServerLimits, XdsService

__all__ = ["BaseStream", "NodeInfo", "ServerLimits", "StreamObserver", "XdsService"]
