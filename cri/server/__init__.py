"""CRI v1 over gRPC: servicers that adapt the runtime's Python services to `runtime.v1`.

The wire schema is the maintained generated stubs of PyPI's
`container-runtime-interface-api` (`cri_api.v1`), not a hand-copied proto.
"""

from cri.server.images_grpc import ImageServiceServicer
from cri.server.serve import CRIServer

__all__ = ["CRIServer", "ImageServiceServicer"]
