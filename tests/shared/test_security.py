from __future__ import annotations

from postback_core.security import (
    generate_api_key,
    hash_api_key,
    mask_in_text,
    mask_secret,
    secrets_equal,
)


def test_api_keys_are_prefixed_unique_and_stored_hashed() -> None:
    first, second = generate_api_key("pub"), generate_api_key("pub")
    assert first.startswith("pub_") and first != second
    assert len(hash_api_key(first)) == 64 and hash_api_key(first) != first


def test_secret_comparison_never_matches_empty() -> None:
    assert secrets_equal("abc", "abc")
    assert not secrets_equal("abd", "abc")
    assert not secrets_equal("", "")
    assert not secrets_equal(None, "abc")


def test_masking_hides_raw_and_percent_encoded_tokens() -> None:
    token = "s3cr3t/t0ken+x"
    url = "https://t.example.com/?a=s3cr3t%2Ft0ken%2Bx&b=s3cr3t/t0ken+x"
    masked = mask_in_text(url, token)
    assert "s3cr3t" not in masked
    assert masked.count("***") == 2
    assert mask_secret("secret_token_123") == "sec***123"
    assert mask_secret("short") == "*****"
