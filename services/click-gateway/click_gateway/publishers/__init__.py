"""Publishers feature."""
