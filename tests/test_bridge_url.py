"""The bridge client's URL check: a malformed URL is a ValueError naming it."""

from __future__ import annotations

import re

import pytest

from trioflow import bridge


@pytest.mark.parametrize(
    ("url", "detail"),
    [
        ("ws://[::1", "Invalid IPv6 URL"),
        ("ws://host:99999", "Port out of range"),
        ("ws://host:http", "Port could not be cast"),
    ],
)
async def test_connect_with_a_malformed_url_names_the_url(url: str, detail: str) -> None:
    # Was: urllib's bare ValueError ("Invalid IPv6 URL"), naming neither the URL nor
    # what it is, raised from inside the client's nursery.
    with pytest.raises(ValueError, match=re.escape(repr(url))) as caught:
        async with bridge.connect(url, token="t", reconnect_attempts=0):
            pass  # pragma: no cover - never reached
    assert "bridge URL" in str(caught.value)
    assert detail in str(caught.value)


@pytest.mark.parametrize("url", ["ws://[::1]:8765/path?x=1", "wss://example.org"])
def test_a_wellformed_url_is_taken_apart(url: str) -> None:
    from trioflow.bridge._dial import parse_url

    target = parse_url(url)
    assert target.host in ("::1", "example.org")
    assert target.port in (8765, 443)
