"""Conversions feature."""
