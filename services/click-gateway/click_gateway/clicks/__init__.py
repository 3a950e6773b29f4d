"""Clicks feature."""
