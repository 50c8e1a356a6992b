"""The wire protocol shared by server and client: message shapes, error types, paths and headers.

Connect (websocket, binary frames, msgpack with numpy arrays, see `msgpack_numpy`):

    server -> client   metadata: {"action_horizon": T, "action_dim": D, "state_dim": S, "camera_keys": [..],
                                  "image_size": H, "embodiment": str, "max_payload_bytes": int,
                                  "max_prompt_chars": int, "max_prompt_tokens": int, "max_connections": int,
                                  "max_connections_per_address": int, "idle_timeout_s": float,
                                  "protocol": int}
    client -> server   observation: {"images": {camera_key: uint8 [H, W, 3]}, "state": float32 [S], "prompt": str}
                       (any H x W: the model resizes each view to image_size; sending that size saves bandwidth)
    server -> client   {"actions": float32 [T, D], "server_timing": {"infer_ms": float, "total_ms": float}} (binary)
                       or an error as a TEXT frame "<one of ERROR_TYPES>: <message>", which an unmodified
                       openpi client raises as an exception and `PolicyClient` as `ProtocolError`; the
                       connection stays usable.

A prompt must be non-empty plain text within the advertised character and token limits (the model's
special tokens are refused); errors are one line of at most 500 characters. Connections beyond
`max_connections` take the slot of a connection idle for 2 s or more (closed with 1001), else are closed with
code 1013 ("try again later"); a connection that sends nothing for `idle_timeout_s` (in the metadata) is closed
with 1001. A request carries only images, state, prompt, depth, intrinsics, embodiment, dataset_name,
episode_start (a boolean: the first request of an episode) and subtasks; any other key is `invalid_value`.
A message larger than `max_payload_bytes` closes that connection with code 1009 (the server never reads an
over-limit message into memory); the server keeps serving and the client reconnects. `GET /healthz` answers
200 "OK". When the server has an API key, the websocket handshake must carry `Authorization: Api-Key <key>`
(as openpi's client sends it); otherwise the handshake is refused with HTTP 401.
"""

from __future__ import annotations

PROTOCOL_VERSION = 1
HEALTH_PATH = "/healthz"
API_KEY_HEADER = "Authorization"
API_KEY_PREFIX = "Api-Key "
MESSAGE_TOO_BIG = 1009  # websocket close code for an over-limit message

ERROR_TYPES = (
    "malformed_message",  # not msgpack, a text frame, not a map, a broken array map
    "unsupported_dtype",  # object / complex / structured arrays
    "missing_key",  # images, state or prompt absent
    "wrong_views",  # camera keys differ from the metadata's camera_keys
    "wrong_shape",  # an image or the state has the wrong shape
    "wrong_dtype",  # e.g. float images, string state
    "wrong_type",  # e.g. a prompt that is not a string
    "invalid_value",  # NaN / inf in the state, an empty or over-long prompt, control tokens in the prompt
    "payload_too_large",  # over max_payload_bytes
    "unauthorized",  # missing, repeated or wrong API key
    "inference_error",  # the policy itself failed, or returned non-finite actions
)


MAX_MESSAGE_CHARS = 500  # an error message never echoes more of the sender's input than this


def one_line(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """`text` on one line, cut to `limit` characters (a hostile key or value is never echoed whole)."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 25] + f"... [{len(flat) - limit + 25} chars cut]"


class ProtocolError(ValueError):
    """A request the server refuses, or a refusal the client received. `type` is one of `ERROR_TYPES`.

    The message is one line of at most MAX_MESSAGE_CHARS characters, whatever it quotes.
    """

    def __init__(self, type: str, message: str) -> None:
        message = one_line(message)
        super().__init__(f"{type}: {message}")
        self.type = type
        self.message = message

    def to_text(self) -> str:
        """The error reply: a TEXT frame "<type>: <message>" (openpi's client raises on any text frame)."""
        return f"{self.type}: {self.message}"

    @classmethod
    def from_text(cls, text: str) -> ProtocolError:
        """A text-frame reply -> the error it carries (an unknown type is kept as a malformed reply)."""
        kind, _, message = text.partition(": ")
        if kind in ERROR_TYPES and message:
            return cls(kind, message)
        return cls("malformed_message", f"server sent text instead of msgpack: {text}")


def api_key_header(api_key: str) -> dict[str, str]:
    return {API_KEY_HEADER: API_KEY_PREFIX + api_key}
