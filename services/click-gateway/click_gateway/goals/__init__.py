"""Goals feature: the conversion events an offer pays for."""
