"""SPDY test vectors: protocols.md §7 and frames captured from real kubectl (embedded).

The capture data is a copy of the SPDY parts of ``docs/vectors/kubectl-captures.json``
(header blocks in one connection share one zlib stream per direction), embedded so the
unit tests need no file outside the repo. ``test_embedded_captures_match_json`` checks
the copy against the JSON when that file is available.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

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


_RAW_CAPTURES: dict = {
    "vec_spdy_1.33": {
        "label": (
            "kubectl 1.33.1, SPDY/3.1 direct (KUBECTL_PORT_FORWARD_WEBSOCKETS=false), "
            "2 local conns + 1 PING"
        ),
        "client_to_server_spdy_frames": [
            {
                "type": "SYN_STREAM",
                "hex": (
                    "800300010000003e0000000100000000000078f9e3c6a7c202253a703a2b294a"
                    "4dcc851625aca9a0808614cb45e01c606a6060c0c0c0c0590489c64c50f26634"
                    "00000000ffff"
                ),
                "sid": 1,
                "flags": 0,
                "headers": [["streamtype", "error"], ["port", "5000"], ["requestid", "0"]],
                "decompressed_hex": (
                    "000000030000000a73747265616d74797065000000056572726f720000000470"
                    "6f72740000000435303030000000097265717565737469640000000130"
                ),
            },
            {"type": "DATA", "hex": "0000000101000000", "sid": 1, "flags": 1},
            {
                "type": "SYN_STREAM",
                "hex": "800300010000001800000003000000000000c2aa19540e2512d60b000000ffff",
                "sid": 3,
                "flags": 0,
                "headers": [["streamtype", "data"], ["port", "5000"], ["requestid", "0"]],
                "decompressed_hex": (
                    "000000030000000a73747265616d74797065000000046461746100000004706f"
                    "72740000000435303030000000097265717565737469640000000130"
                ),
            },
            {
                "type": "DATA",
                "hex": "000000030000001468656c6c6f203020766961206b75626563746c0a",
                "sid": 3,
                "flags": 0,
            },
            {"type": "DATA", "hex": "0000000301000000", "sid": 3, "flags": 1},
            {
                "type": "SYN_STREAM",
                "hex": "800300010000001400000005000000000000a2c4624300000000ffff",
                "sid": 5,
                "flags": 0,
                "headers": [["streamtype", "error"], ["port", "5000"], ["requestid", "1"]],
                "decompressed_hex": (
                    "000000030000000a73747265616d74797065000000056572726f720000000470"
                    "6f72740000000435303030000000097265717565737469640000000131"
                ),
            },
            {"type": "DATA", "hex": "0000000501000000", "sid": 5, "flags": 1},
            {
                "type": "SYN_STREAM",
                "hex": "800300010000001400000007000000000000a2c0624300000000ffff",
                "sid": 7,
                "flags": 0,
                "headers": [["streamtype", "data"], ["port", "5000"], ["requestid", "1"]],
                "decompressed_hex": (
                    "000000030000000a73747265616d74797065000000046461746100000004706f"
                    "72740000000435303030000000097265717565737469640000000131"
                ),
            },
            {
                "type": "DATA",
                "hex": "000000070000001468656c6c6f203120766961206b75626563746c0a",
                "sid": 7,
                "flags": 0,
            },
            {"type": "DATA", "hex": "0000000701000000", "sid": 7, "flags": 1},
            {"type": "PING", "hex": "800300060000000400000001", "flags": 0, "ping_id": 1},
        ],
        "server_to_client_spdy_frames": [
            "80030002000000140000000178f9e3c6a7c202a6230600000000ffff",
            "800300020000000c00000003020100000000ffff",
            "000000030000001468656c6c6f203020766961206b75626563746c0a",
            "0000000301000000",
            "0000000101000000",
            "800300020000000c00000005020100000000ffff",
            "800300020000000c00000007020100000000ffff",
            "000000070000001468656c6c6f203120766961206b75626563746c0a",
            "0000000701000000",
            "0000000501000000",
            "800300060000000400000001",
        ],
    },
    "vec_spdy_1.27": {
        "label": "kubectl 1.27.16, SPDY/3.1 direct, 1 local conn",
        "client_to_server_spdy_frames": [
            {
                "type": "SYN_STREAM",
                "hex": (
                    "800300010000003e0000000100000000000078f9e3c6a7c202253a703a2b294a"
                    "4dcc851625aca9a0808614cb45e01c606a6060c0c0c0c0590489c64c50f26634"
                    "00000000ffff"
                ),
                "sid": 1,
                "flags": 0,
                "headers": [["streamtype", "error"], ["port", "5000"], ["requestid", "0"]],
                "decompressed_hex": (
                    "000000030000000a73747265616d74797065000000056572726f720000000470"
                    "6f72740000000435303030000000097265717565737469640000000130"
                ),
            },
            {"type": "DATA", "hex": "0000000101000000", "sid": 1, "flags": 1},
            {
                "type": "SYN_STREAM",
                "hex": ("800300010000001c00000003000000000000826ac61445350e543225a29b06000000ffff"),
                "sid": 3,
                "flags": 0,
                "headers": [["requestid", "0"], ["streamtype", "data"], ["port", "5000"]],
                "decompressed_hex": (
                    "000000030000000972657175657374696400000001300000000a73747265616d"
                    "74797065000000046461746100000004706f72740000000435303030"
                ),
            },
            {
                "type": "DATA",
                "hex": "000000030000001468656c6c6f203020766961206b75626563746c0a",
                "sid": 3,
                "flags": 0,
            },
            {"type": "DATA", "hex": "0000000301000000", "sid": 3, "flags": 1},
        ],
        "server_to_client_spdy_frames": [
            "80030002000000140000000178f9e3c6a7c202a6230600000000ffff",
            "800300020000000c00000003020100000000ffff",
            "000000030000001468656c6c6f203020766961206b75626563746c0a",
            "0000000301000000",
            "0000000101000000",
        ],
    },
    "vec_ws_1.33": {
        "label": "kubectl 1.33.1, SPDY over WebSocket (SPDY/3.1+portforward.k8s.io), 2 local conns",
        "client_to_server_spdy_frames": [
            {
                "type": "SYN_STREAM",
                "hex": (
                    "800300010000003e0000000100000000000078f9e3c6a7c202253a703a2b294a"
                    "4dcc851625aca9a0808614cb45e01c606a6060c0c0c0c0590489c64c50f26634"
                    "00000000ffff"
                ),
                "sid": 1,
                "flags": 0,
                "headers": [["streamtype", "error"], ["port", "5000"], ["requestid", "0"]],
                "decompressed_hex": (
                    "000000030000000a73747265616d74797065000000056572726f720000000470"
                    "6f72740000000435303030000000097265717565737469640000000130"
                ),
            },
            {"type": "DATA", "hex": "0000000101000000", "sid": 1, "flags": 1},
            {
                "type": "SYN_STREAM",
                "hex": "800300010000001800000003000000000000c2aa19540e2512d60b000000ffff",
                "sid": 3,
                "flags": 0,
                "headers": [["streamtype", "data"], ["port", "5000"], ["requestid", "0"]],
                "decompressed_hex": (
                    "000000030000000a73747265616d74797065000000046461746100000004706f"
                    "72740000000435303030000000097265717565737469640000000130"
                ),
            },
            {
                "type": "DATA",
                "hex": "000000030000001468656c6c6f203020766961206b75626563746c0a",
                "sid": 3,
                "flags": 0,
            },
            {"type": "DATA", "hex": "0000000301000000", "sid": 3, "flags": 1},
            {
                "type": "SYN_STREAM",
                "hex": "80030001000000180000000500000000000082eac5afca1087d300000000ffff",
                "sid": 5,
                "flags": 0,
                "headers": [["port", "5000"], ["requestid", "1"], ["streamtype", "error"]],
                "decompressed_hex": (
                    "0000000300000004706f72740000000435303030000000097265717565737469"
                    "6400000001310000000a73747265616d74797065000000056572726f72"
                ),
            },
            {"type": "DATA", "hex": "0000000501000000", "sid": 5, "flags": 1},
            {
                "type": "SYN_STREAM",
                "hex": "800300010000001400000007000000000000a2c0624300000000ffff",
                "sid": 7,
                "flags": 0,
                "headers": [["streamtype", "data"], ["port", "5000"], ["requestid", "1"]],
                "decompressed_hex": (
                    "000000030000000a73747265616d74797065000000046461746100000004706f"
                    "72740000000435303030000000097265717565737469640000000131"
                ),
            },
            {
                "type": "DATA",
                "hex": "000000070000001468656c6c6f203120766961206b75626563746c0a",
                "sid": 7,
                "flags": 0,
            },
            {"type": "DATA", "hex": "0000000701000000", "sid": 7, "flags": 1},
            {"type": "PING", "hex": "800300060000000400000001", "flags": 0, "ping_id": 1},
        ],
        "server_to_client_spdy_frames": [
            "80030002000000140000000178f9e3c6a7c202a6230600000000ffff",
            "800300020000000c00000003020100000000ffff",
            "000000030000001468656c6c6f203020766961206b75626563746c0a",
            "0000000301000000",
            "0000000101000000",
            "800300020000000c00000005020100000000ffff",
            "800300020000000c00000007020100000000ffff",
            "000000070000001468656c6c6f203120766961206b75626563746c0a",
            "0000000701000000",
            "0000000501000000",
            "800300060000000400000001",
        ],
        "client_ws_message_payloads_unmasked": [
            {"opcode": 2, "fin": True, "hex": "8003"},
            {"opcode": 2, "fin": True, "hex": "0001"},
            {"opcode": 2, "fin": True, "hex": "0000003e"},
            {"opcode": 2, "fin": True, "hex": "00000001"},
            {"opcode": 2, "fin": True, "hex": "00000000"},
            {"opcode": 2, "fin": True, "hex": "00"},
            {"opcode": 2, "fin": True, "hex": "00"},
            {
                "opcode": 2,
                "fin": True,
                "hex": (
                    "78f9e3c6a7c202253a703a2b294a4dcc851625aca9a0808614cb45e01c606a60"
                    "60c0c0c0c0590489c64c50f2663400000000ffff"
                ),
            },
            {"opcode": 2, "fin": True, "hex": "00000001"},
            {"opcode": 2, "fin": True, "hex": "01000000"},
            {"opcode": 2, "fin": True, "hex": ""},
            {"opcode": 2, "fin": True, "hex": "8003"},
            {"opcode": 2, "fin": True, "hex": "0001"},
            {"opcode": 2, "fin": True, "hex": "00000018"},
            {"opcode": 2, "fin": True, "hex": "00000003"},
            {"opcode": 2, "fin": True, "hex": "00000000"},
            {"opcode": 2, "fin": True, "hex": "00"},
            {"opcode": 2, "fin": True, "hex": "00"},
            {"opcode": 2, "fin": True, "hex": "c2aa19540e2512d60b000000ffff"},
            {"opcode": 2, "fin": True, "hex": "00000003"},
            {"opcode": 2, "fin": True, "hex": "00000014"},
            {"opcode": 2, "fin": True, "hex": "68656c6c6f203020766961206b75626563746c0a"},
            {"opcode": 2, "fin": True, "hex": "00000003"},
            {"opcode": 2, "fin": True, "hex": "01000000"},
            {"opcode": 2, "fin": True, "hex": ""},
            {"opcode": 2, "fin": True, "hex": "8003"},
            {"opcode": 2, "fin": True, "hex": "0001"},
            {"opcode": 2, "fin": True, "hex": "00000018"},
            {"opcode": 2, "fin": True, "hex": "00000005"},
            {"opcode": 2, "fin": True, "hex": "00000000"},
            {"opcode": 2, "fin": True, "hex": "00"},
            {"opcode": 2, "fin": True, "hex": "00"},
            {"opcode": 2, "fin": True, "hex": "82eac5afca1087d300000000ffff"},
            {"opcode": 2, "fin": True, "hex": "00000005"},
            {"opcode": 2, "fin": True, "hex": "01000000"},
            {"opcode": 2, "fin": True, "hex": ""},
            {"opcode": 2, "fin": True, "hex": "8003"},
            {"opcode": 2, "fin": True, "hex": "0001"},
            {"opcode": 2, "fin": True, "hex": "00000014"},
            {"opcode": 2, "fin": True, "hex": "00000007"},
            {"opcode": 2, "fin": True, "hex": "00000000"},
            {"opcode": 2, "fin": True, "hex": "00"},
            {"opcode": 2, "fin": True, "hex": "00"},
            {"opcode": 2, "fin": True, "hex": "a2c0624300000000ffff"},
            {"opcode": 2, "fin": True, "hex": "00000007"},
            {"opcode": 2, "fin": True, "hex": "00000014"},
            {"opcode": 2, "fin": True, "hex": "68656c6c6f203120766961206b75626563746c0a"},
            {"opcode": 2, "fin": True, "hex": "00000007"},
            {"opcode": 2, "fin": True, "hex": "01000000"},
            {"opcode": 2, "fin": True, "hex": ""},
            {"opcode": 2, "fin": True, "hex": "8003"},
            {"opcode": 2, "fin": True, "hex": "0006"},
            {"opcode": 2, "fin": True, "hex": "00000004"},
            {"opcode": 2, "fin": True, "hex": "00000001"},
        ],
    },
}


def _frame(f: dict) -> CapturedFrame:
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


def _capture(name: str, c: dict) -> Capture:
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


CAPTURES: dict[str, Capture] = {name: _capture(name, c) for name, c in _RAW_CAPTURES.items()}


def _captures_json() -> Path:
    """The shared capture file: $PODGATE_KUBECTL_CAPTURES, else `shared/` beside the repo."""
    if "PODGATE_KUBECTL_CAPTURES" in os.environ:
        return Path(os.environ["PODGATE_KUBECTL_CAPTURES"])
    repo = Path(__file__).resolve().parents[2]
    return repo.parent / "shared" / "docs" / "vectors" / "kubectl-captures.json"


CAPTURES_JSON = _captures_json()


def load_json_connections() -> dict | None:
    """The SPDY connections of the original JSON capture file, or None if it is absent."""
    if not CAPTURES_JSON.is_file():
        return None
    data = json.loads(CAPTURES_JSON.read_text())
    return {
        name: c for name, c in data["connections"].items() if "client_to_server_spdy_frames" in c
    }


def normalize(events: list) -> list:
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
