"""Offers feature."""
