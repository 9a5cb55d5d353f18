"""Port specs, listen addresses and the ``Forwarding from`` line, as kubectl has them."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.ports import (
    ListenAddress,
    ListenAddressError,
    PortMapping,
    PortSpecError,
    format_forwarding_lines,
    parse_listen_addresses,
    parse_port_spec,
    parse_port_specs,
    resolve_listen_addresses,
)

ACCEPTED = [
    # spec, local_port, remote_port
    ("5000", 5000, 5000),
    ("8888:5000", 8888, 5000),
    (":5000", 0, 5000),
    ("0:5000", 0, 5000),
    ("1", 1, 1),
    ("65535", 65535, 65535),
    ("65535:1", 65535, 1),
    ("0:65535", 0, 65535),
    ("05000", 5000, 5000),  # Go's ParseUint takes leading zeros, so does kubectl
    ("08888:005000", 8888, 5000),
]


@pytest.mark.parametrize(("spec", "local_port", "remote_port"), ACCEPTED)
def test_accepted_specs(spec: str, local_port: int, remote_port: int) -> None:
    assert parse_port_spec(spec) == PortMapping(spec, local_port, remote_port)
    assert parse_port_spec(spec).remote_name is None


USAGE = '[LOCAL_PORT:]REMOTE_PORT, e.g. "5000", "8888:5000" or ":5000"'
REJECTED = [
    ("0", 'invalid port spec "0": remote port must be between 1 and 65535'),
    ("0:0", 'invalid port spec "0:0": remote port must be between 1 and 65535'),
    (":0", 'invalid port spec ":0": remote port must be between 1 and 65535'),
    (
        "8888:abc",
        'invalid port spec "8888:abc": remote port "abc" is not a number'
        " (named ports are not supported yet)",
    ),
    ("8888:5!", 'invalid port spec "8888:5!": remote port "5!" is not a number'),
    ("+5000", 'invalid port spec "+5000": remote port "+5000" is not a number'),
    ("5_000", 'invalid port spec "5_000": remote port "5_000" is not a number'),
    (  # Arabic-Indic digits: int() takes them, Go's ParseUint does not
        "\u0665\u0660\u0660\u0660",
        'invalid port spec "\u0665\u0660\u0660\u0660":'
        ' remote port "\u0665\u0660\u0660\u0660" is not a number',
    ),
    ("abc:80", 'invalid port spec "abc:80": local port "abc" is not a number'),
    ("70000", 'invalid port spec "70000": remote port 70000 is greater than 65535'),
    ("1:65536", 'invalid port spec "1:65536": remote port 65536 is greater than 65535'),
    ("70000:5000", 'invalid port spec "70000:5000": local port 70000 is greater than 65535'),
    (
        "99999999999999999999",
        'invalid port spec "99999999999999999999": remote port 99999999999999999999'
        " is greater than 65535",
    ),
    (
        "8888:5000:1",
        'invalid port spec "8888:5000:1": expected [LOCAL_PORT:]REMOTE_PORT'
        ' with at most one ":", e.g. "8888:5000"',
    ),
    (
        "::5000",
        'invalid port spec "::5000": expected [LOCAL_PORT:]REMOTE_PORT'
        ' with at most one ":", e.g. "8888:5000"',
    ),
    ("", f'invalid port spec "": it is empty; expected {USAGE}'),
    (" 5000", 'invalid port spec " 5000": it must not contain spaces or other whitespace'),
    (
        "8888: 5000",
        'invalid port spec "8888: 5000": it must not contain spaces or other whitespace',
    ),
    ("5000\n", 'invalid port spec "5000\\n": it must not contain spaces or other whitespace'),
    ("-1", 'invalid port spec "-1": remote port -1 is negative; it must be between 1 and 65535'),
    (
        "8888:-1",
        'invalid port spec "8888:-1": remote port -1 is negative; it must be between 1 and 65535',
    ),
    (
        "-1:80",
        'invalid port spec "-1:80": local port -1 is negative; it must be between 0 and 65535',
    ),
    ("5000:", 'invalid port spec "5000:": the remote port after ":" is missing'),
    (":", 'invalid port spec ":": the remote port after ":" is missing'),
]


@pytest.mark.parametrize(("spec", "message"), REJECTED)
def test_rejected_specs(spec: str, message: str) -> None:
    with pytest.raises(PortSpecError) as caught:
        parse_port_spec(spec)
    assert str(caught.value) == message
    assert caught.value.spec == spec
    assert isinstance(caught.value, ValueError)


def test_rejected_spec_in_a_list_names_that_spec() -> None:
    with pytest.raises(PortSpecError, match=r'^invalid port spec "0": ') as caught:
        parse_port_specs(["5000", "0", "6000"])
    assert caught.value.spec == "0"


def test_specs_keep_request_order() -> None:
    specs = ["5000", "8888:5000", ":6000", "0:7000"]
    assert parse_port_specs(specs) == [
        PortMapping("5000", 5000, 5000),
        PortMapping("8888:5000", 8888, 5000),
        PortMapping(":6000", 0, 6000),
        PortMapping("0:7000", 0, 7000),
    ]


@pytest.mark.parametrize(
    ("specs", "message", "bad"),
    [
        (
            ["8888:5000", "8888:6000"],
            'invalid port specs: local port 8888 is used twice ("8888:5000", "8888:6000")',
            "8888:6000",
        ),
        (
            ["5000", "5000"],
            'invalid port specs: local port 5000 is used twice ("5000", "5000")',
            "5000",
        ),
        (
            ["5000", "1:2", "05000:80"],
            'invalid port specs: local port 5000 is used twice ("5000", "05000:80")',
            "05000:80",
        ),
        (
            [],
            f"invalid port specs: the list is empty; give at least one {USAGE}",
            None,
        ),
    ],
)
def test_rejected_spec_lists(specs: list[str], message: str, bad: str | None) -> None:
    with pytest.raises(PortSpecError) as caught:
        parse_port_specs(specs)
    assert str(caught.value) == message
    assert caught.value.spec == bad


def test_os_picked_local_ports_may_repeat() -> None:
    # Each ":5000" gets its own free port; only fixed local ports can collide.
    assert [m.local_port for m in parse_port_specs([":5000", "0:5000", ":6000"])] == [0, 0, 0]


def test_same_remote_port_on_two_local_ports_is_fine() -> None:
    assert len(parse_port_specs(["8888:5000", "8889:5000"])) == 2


def test_a_single_string_is_not_a_list_of_specs() -> None:
    with pytest.raises(TypeError):
        parse_port_specs("5000")
    with pytest.raises(TypeError):
        parse_port_spec(5000)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("8080:http", PortMapping("8080:http", 8080, 0, remote_name="http")),
        (":https", PortMapping(":https", 0, 0, remote_name="https")),
        ("metrics-2", PortMapping("metrics-2", 0, 0, remote_name="metrics-2")),
    ],
)
def test_named_remote_ports_for_a_later_issue(spec: str, expected: PortMapping) -> None:
    assert parse_port_spec(spec, allow_names=True) == expected
    with pytest.raises(PortSpecError, match="named ports are not supported yet"):
        parse_port_spec(spec)


@pytest.mark.parametrize("name", ["HTTP", "-http", "http-", "a--b", "abcdefghijklmnop", "1234x!"])
def test_invalid_port_names_are_not_names(name: str) -> None:
    with pytest.raises(PortSpecError, match=r'is not a number"?$'):
        parse_port_spec(f"80:{name}", allow_names=True)


def test_resolving_a_named_port_follows_kubectl() -> None:
    # kubectl: "http" alone listens on the resolved number, ":http" on a free port.
    assert parse_port_spec("http", allow_names=True).with_remote_port(8080) == PortMapping(
        "http", 8080, 8080
    )
    assert parse_port_spec(":http", allow_names=True).with_remote_port(8080) == PortMapping(
        ":http", 0, 8080
    )
    assert parse_port_spec("9000:http", allow_names=True).with_remote_port(8080) == PortMapping(
        "9000:http", 9000, 8080
    )


@pytest.mark.parametrize(
    ("local_port", "remote_port", "remote_name"),
    [(-1, 80, None), (65536, 80, None), (0, 0, None), (0, 65536, None), (0, 80, "http")],
)
def test_port_mapping_refuses_impossible_values(
    local_port: int, remote_port: int, remote_name: str | None
) -> None:
    with pytest.raises(ValueError):
        PortMapping("x", local_port, remote_port, remote_name)


ports = st.integers(min_value=1, max_value=65535)


@given(local=st.integers(min_value=0, max_value=65535), remote=ports, zeros=st.integers(0, 3))
def test_any_valid_pair_parses_back(local: int, remote: int, zeros: int) -> None:
    spec = f"{'0' * zeros}{local}:{remote}"
    assert parse_port_spec(spec) == PortMapping(spec, local, remote)


@given(remote=ports)
def test_any_valid_port_parses_back_in_every_form(remote: int) -> None:
    assert parse_port_spec(str(remote)) == PortMapping(str(remote), remote, remote)
    assert parse_port_spec(f":{remote}") == PortMapping(f":{remote}", 0, remote)
    assert parse_port_spec(f"0:{remote}") == PortMapping(f"0:{remote}", 0, remote)


@given(st.text(max_size=12))
def test_any_text_parses_or_raises_port_spec_error(spec: str) -> None:
    try:
        mapping = parse_port_spec(spec)
    except PortSpecError as error:
        assert str(error).startswith("invalid port spec ")
    else:
        assert 0 <= mapping.local_port <= 65535
        assert 1 <= mapping.remote_port <= 65535


@pytest.mark.parametrize(
    ("address", "local_port", "remote_port", "line"),
    [
        ("127.0.0.1", 42390, 7000, "Forwarding from 127.0.0.1:42390 -> 7000"),
        ("::1", 42390, 7000, "Forwarding from [::1]:42390 -> 7000"),
        ("0.0.0.0", 8888, 5000, "Forwarding from 0.0.0.0:8888 -> 5000"),
        ("::", 8888, 5000, "Forwarding from [::]:8888 -> 5000"),
    ],
)
def test_forwarding_line(address: str, local_port: int, remote_port: int, line: str) -> None:
    assert format_forwarding_lines(address, local_port, remote_port) == line


@pytest.mark.parametrize(
    ("addresses", "hosts"),
    [
        (["localhost"], ["127.0.0.1", "::1"]),
        (["localhost", "localhost"], ["127.0.0.1", "::1"]),
        (["0.0.0.0"], ["0.0.0.0"]),
        (["localhost", "10.19.21.23"], ["127.0.0.1", "::1", "10.19.21.23"]),
        (["10.19.21.23", "localhost"], ["10.19.21.23", "127.0.0.1", "::1"]),
        (["::1", "127.0.0.1", "::1"], ["::1", "127.0.0.1"]),
        (["0:0:0:0:0:0:0:1", "localhost"], ["::1", "127.0.0.1"]),
        (["::ffff:10.0.0.1", "10.0.0.1"], ["10.0.0.1"]),
        (["FE80::1"], ["fe80::1"]),
    ],
)
def test_listen_addresses(addresses: list[str], hosts: list[str]) -> None:
    assert resolve_listen_addresses(addresses) == hosts


def test_only_localhost_addresses_may_fail_to_bind() -> None:
    assert parse_listen_addresses(["localhost", "127.0.0.1", "10.0.0.1"]) == [
        ListenAddress("127.0.0.1", 4, required=True),
        ListenAddress("::1", 6, required=False),
        ListenAddress("10.0.0.1", 4, required=True),
    ]


@pytest.mark.parametrize(
    ("addresses", "message"),
    [
        (["foo"], 'invalid listen address "foo": it must be an IP address or "localhost"'),
        (
            ["LOCALHOST"],
            'invalid listen address "LOCALHOST": it must be an IP address or "localhost"',
        ),
        (
            ["localhost", ""],
            'invalid listen address "": it must be an IP address or "localhost"',
        ),
        (
            [" 127.0.0.1"],
            'invalid listen address " 127.0.0.1": it must be an IP address or "localhost"',
        ),
        (
            ["127.0.0.1:8080"],
            'invalid listen address "127.0.0.1:8080": it must be an IP address or "localhost"',
        ),
        (
            ["[::1]"],
            'invalid listen address "[::1]": it must be an IP address or "localhost"'
            " (write IPv6 addresses without brackets)",
        ),
        (
            ["010.0.0.1"],
            'invalid listen address "010.0.0.1": it must be an IP address or "localhost"'
            " (remove the leading zeros: they are ambiguous)",
        ),
        (
            ["300.0.0.1"],
            'invalid listen address "300.0.0.1": it must be an IP address or "localhost"',
        ),
        (
            ["fe80::1%lo"],
            'invalid listen address "fe80::1%lo": IPv6 zone identifiers are not supported',
        ),
        ([], 'no listen address given; use "localhost" or one or more IP addresses'),
    ],
)
def test_rejected_listen_addresses(addresses: list[str], message: str) -> None:
    with pytest.raises(ListenAddressError) as caught:
        resolve_listen_addresses(addresses)
    assert str(caught.value) == message
    assert isinstance(caught.value, ValueError)


def test_a_single_string_is_not_a_list_of_addresses() -> None:
    with pytest.raises(TypeError):
        resolve_listen_addresses("localhost")
