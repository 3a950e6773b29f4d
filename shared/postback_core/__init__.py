"""Code shared by the click gateway and the postback dispatcher.

Event contract, queue topology, settings bases, database models and helpers,
macro catalogue and secret handling live here so both services agree on them.
"""
