"""vlablocks policy client: query a `vlablocks serve` (or any openpi-protocol) policy server.

Depends on numpy, msgpack and websockets only. Installed on its own (`pip install deployment/client`) it is
imported as `vlablocks_client`; inside the vlablocks repository it is also `deployment.client`.

    from vlablocks_client import ActionChunkBroker, PolicyClient

    client = PolicyClient("127.0.0.1", 8000, api_key=None)
    broker = ActionChunkBroker(client, open_loop_horizon=4)
    action = broker.infer({"images": {"image": img}, "state": state, "prompt": "pick up the cube"})["actions"]
"""

from .action_chunk_broker import ActionChunkBroker
from .image_tools import resize_with_pad
from .protocol import ERROR_TYPES, ProtocolError
from .websocket_client import PolicyClient

__all__ = ["ActionChunkBroker", "ERROR_TYPES", "PolicyClient", "ProtocolError", "resize_with_pad"]
