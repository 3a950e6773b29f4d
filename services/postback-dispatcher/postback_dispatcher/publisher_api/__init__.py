"""The publisher's own API (``/api/v1/me/...``, X-Api-Key): postback settings, tests, log."""
