"""Outbox feature."""
