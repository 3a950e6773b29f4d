from __future__ import annotations

import base64
from urllib.parse import quote, quote_plus

import pytest

from postback_core.security import (
    generate_api_key,
    hash_api_key,
    mask_in_text,
    mask_secret,
    secrets_equal,
    url_credentials,
)

TOKEN = "s3cr3t/t0ken+x y~Z9"  # long: shows its last 4 characters


def test_api_keys_are_prefixed_unique_and_stored_hashed() -> None:
    first, second = generate_api_key("pub"), generate_api_key("pub")
    assert first.startswith("pub_") and first != second
    assert len(hash_api_key(first)) == 64 and hash_api_key(first) != first


def test_secret_comparison_never_matches_empty() -> None:
    assert secrets_equal("abc", "abc")
    assert not secrets_equal("abd", "abc")
    assert not secrets_equal("", "")
    assert not secrets_equal(None, "abc")


def test_a_masked_secret_shows_at_most_its_last_four_characters() -> None:
    assert mask_secret("secret_token_123") == "****_123"
    assert mask_secret("tok_12345678") == "****5678"
    # Short secrets show nothing: four characters would be a third of one.
    assert mask_secret("tok_1234567") == "****"
    assert mask_secret("short") == "****"
    assert mask_secret(None) is None


def _lower_escapes(text: str) -> str:
    import re

    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), text)


@pytest.mark.parametrize(
    "form",
    [
        TOKEN,
        quote(TOKEN, safe=""),
        quote(TOKEN, safe="-._~"),
        quote(TOKEN),  # "/" left raw: a partly encoded form
        _lower_escapes(quote(TOKEN, safe="")),
        quote_plus(TOKEN, safe=""),
        TOKEN.replace(" ", "+"),
        _lower_escapes(quote_plus(TOKEN)),
        # No encoder writes these, but a receiver may: unreserved characters
        # encoded, upper and lower case mixed, raw and encoded mixed.
        "%73" + quote(TOKEN, safe="")[1:].replace("%2F", "%2f"),
        TOKEN.replace("/", "%2f").replace(" ", "%20"),
    ],
)
def test_masking_finds_the_token_in_every_url_encoding(form: str) -> None:
    text = f"GET /pb?a={form}&b=1 HTTP/1.1\r\nHost: t.example\r\n"
    masked = mask_in_text(text, TOKEN)
    assert form not in masked
    assert masked == "GET /pb?a=****y~Z9&b=1 HTTP/1.1\r\nHost: t.example\r\n"


def test_masking_hides_url_userinfo_and_its_basic_auth_header() -> None:
    url = "https://alice:p%40ss%2Fw0rd-long@t.example/pb?c=1"
    basic = base64.b64encode(b"alice:p@ss/w0rd-long").decode()
    echoed = f"GET /pb?c=1 HTTP/1.1\r\nAuthorization: Basic {basic}\r\n"
    assert url_credentials(url) == ("p@ss/w0rd-long", basic)
    assert mask_in_text(url, None) == "https://alice:****@t.example/pb?c=1"
    masked = mask_in_text(echoed, url=url)
    assert basic not in masked and "Authorization: Basic ****" in masked
    # An error message quoting another URL with credentials, and a raw "@" in a password.
    message = "cannot connect to http://bob:pa@ss@h.example:81/x (refused)"
    assert mask_in_text(message) == "cannot connect to http://bob:****@h.example:81/x (refused)"


def test_masking_leaves_text_without_secrets_alone() -> None:
    text = "ok: mail me at ops@example.com, see https://t.example/pb?x=1#a"
    assert mask_in_text(text, "not-in-there-at-all") == text


def test_a_userinfo_without_password_is_all_secret_and_a_masked_template_restores() -> None:
    from postback_core.security import restore_masked_credentials

    assert mask_in_text("https://tok_abc@t.example/") == "https://****@t.example/"
    stored = "https://alice:p%40ss@t.example/pb?c={click_id}"
    shown = mask_in_text(stored)
    assert shown == "https://alice:****@t.example/pb?c={click_id}"
    # Saved back unchanged (or with another path): the real password stays.
    assert restore_masked_credentials(shown + "&v=2", stored) == stored + "&v=2"
    # A new password, or another user, is taken as typed.
    assert restore_masked_credentials("https://alice:new@t.example/", stored).startswith(
        "https://alice:new@"
    )
    assert restore_masked_credentials("https://bob:****@t.example/", stored) == (
        "https://bob:****@t.example/"
    )


def test_a_cut_text_ending_in_the_start_of_a_secret_hides_that_start() -> None:
    echoed = "GET /pb?t=" + quote(TOKEN, safe="")
    for cut_at in range(len("GET /pb?t=") + 3, len(echoed)):
        masked = mask_in_text(echoed[:cut_at], TOKEN, cut=True)
        assert masked == "GET /pb?t=****", cut_at
    # Without ``cut`` (a whole text) an ending that merely looks like the start stays.
    assert mask_in_text("see s3c", TOKEN) == "see s3c"
    assert mask_in_text("see s3c", TOKEN, cut=True) == "see ****"
