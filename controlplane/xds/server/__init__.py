"""What the replica knows of each xDS stream (the native core serves them): nodes, admission
and the stream observer protocol."""

from controlplane.xds.server.admission import ServerLimits
from controlplane.xds.server.common import BaseStream, NodeInfo, StreamObserver

__all__ = ["BaseStream", "NodeInfo", "ServerLimits", "StreamObserver"]
