"""Smartlinks feature."""
