"""Dead letters: the operators' view of postbacks that gave up, with replay and purge."""
