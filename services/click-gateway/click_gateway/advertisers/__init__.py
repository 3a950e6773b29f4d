"""Advertisers feature."""
