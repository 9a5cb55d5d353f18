"""SPDY test vectors: docs/protocols.md §7 and frames captured from real kubectl.

The captures are read from ``vectors/kubectl-captures.json`` beside this file (where they
come from: ``vectors/README.md``). Header blocks in one connection share one zlib stream
per direction, so a connection's frames must be decoded in order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# §7 vectors, hex.
V1_SHA256 = "51d27341373f923f3cd88e1eb7162aeaa3723d7585ff2399201dc06498407f02"
V2_ERROR_BLOCK = (
    "000000030000000a73747265616d74797065000000056572726f720000000470"
    "6f72740000000438303830000000097265717565737469640000000130"
)
V3_GO_BLOCK = (
    "78f9e3c6a7c202253a703a2b294a4dcc851625aca9a0808614cb45e01c606160"
    "61c0c0c0c0590489c64c50f2663400000000ffff"
)
V4_GO_BLOCK = "c2aa19540e2512d60b000000ffff"
V5_SYN_STREAM_1 = (
    "800300010000003e0000000100000000000078f9e3c6a7c202253a703a2b294a"
    "4dcc851625aca9a0808614cb45e01c60616061c0c0c0c0590489c64c50f26634"
    "00000000ffff"
)
V5_SYN_STREAM_3 = "800300010000001800000003000000000000c2aa19540e2512d60b000000ffff"
V6_SYN_REPLY_1 = "80030002000000140000000178f9e3c6a7c26260606000000000ffff"
V6_SYN_REPLY_3 = "800300020000000c00000003026100000000ffff"
V7_PY_BLOCK = (
    "78f9e3c6a7c202253a703a2b294a4dcc851625aca9a0808614cb45e01c606160"
    "6100a4398b20d198094ade8c0600000000ffff"
)
V7_PY_DATA_BLOCK = "c2aa19540e2512d60b000000ffff"
V7_PY_EMPTY_1 = "78f9e3c6a7c202a6230600000000ffff"
V7_PY_EMPTY_2 = "020100000000ffff"

PORT_8080_ERROR = (("streamtype", "error"), ("port", "8080"), ("requestid", "0"))
PORT_8080_DATA = (("streamtype", "data"), ("port", "8080"), ("requestid", "0"))

# V8 fixed frames, by name.
V8 = {
    "data_s3_hello": "000000030000000568656c6c6f",
    "data_s1_fin_empty": "0000000101000000",
    "rst_s7_cancel": "80030003000000080000000700000005",
    "ping_1": "800300060000000400000001",
    "goaway_0_ok": "80030007000000080000000000000000",
    "settings_initial_window": "800300040000000c000000010000000700010000",
}


@dataclass(frozen=True)
class CapturedFrame:
    type: str
    raw: bytes
    sid: int | None = None
    flags: int = 0
    headers: tuple[tuple[str, str], ...] | None = None
    decompressed: bytes | None = None
    ping_id: int | None = None


@dataclass(frozen=True)
class Capture:
    name: str
    label: str
    client_frames: tuple[CapturedFrame, ...]
    server_frames: tuple[bytes, ...]
    client_ws_messages: tuple[bytes, ...] | None


def _frame(f: dict[str, Any]) -> CapturedFrame:
    headers = f.get("headers")
    decompressed = f.get("decompressed_hex")
    return CapturedFrame(
        type=f["type"],
        raw=bytes.fromhex(f["hex"]),
        sid=f.get("sid"),
        flags=f.get("flags", 0),
        headers=None if headers is None else tuple((n, v) for n, v in headers),
        decompressed=None if decompressed is None else bytes.fromhex(decompressed),
        ping_id=f.get("ping_id"),
    )


def _capture(name: str, c: dict[str, Any]) -> Capture:
    ws = c.get("client_ws_message_payloads_unmasked")
    return Capture(
        name=name,
        label=c["label"],
        client_frames=tuple(_frame(f) for f in c["client_to_server_spdy_frames"]),
        server_frames=tuple(bytes.fromhex(h) for h in c["server_to_client_spdy_frames"]),
        client_ws_messages=None
        if ws is None
        else tuple(bytes.fromhex(m["hex"]) for m in ws if m["opcode"] == 2),
    )


#: Frames captured from real kubectl binaries (see vectors/README.md).
CAPTURES_JSON = Path(__file__).resolve().parent / "vectors" / "kubectl-captures.json"


def _load_captures() -> dict[str, Capture]:
    """The SPDY connections of the capture file (every one that has client frames)."""
    data = json.loads(CAPTURES_JSON.read_text())
    return {
        name: _capture(name, c)
        for name, c in data["connections"].items()
        if "client_to_server_spdy_frames" in c
    }


CAPTURES: dict[str, Capture] = _load_captures()


def normalize(events: list[Any]) -> list[Any]:
    """Events made comparable: a StreamRejected's exception becomes its observable fields."""
    from service.protocols.spdy import StreamRejected

    out = []
    for event in events:
        if isinstance(event, StreamRejected):
            err = event.error
            out.append(
                ("rejected", event.stream_id, type(err), err.error_code, err.stream_id, err.message)
            )
        else:
            out.append(event)
    return out
