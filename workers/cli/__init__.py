"""The ``drflow`` command line, one module per command family.

``main`` is the root group and the console script's entry point; every command module imports only
``common``, the shared leaf, so the package has no import cycle.
"""
