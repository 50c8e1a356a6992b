"""Policy serving: a websocket server speaking the openpi wire protocol, and its client (`deployment.client`).

Importing this package imports nothing heavy: the server half (`vlablocks.core.serving.server`, `vlablocks.core.serving.policy`) pulls in
vlablocks only when a checkpoint is loaded, and the client half has no dependency beyond numpy, msgpack and
websockets (it installs on its own as `vlablocks-client`; see deployment/client/README.md).
"""
