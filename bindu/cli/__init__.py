"""The ``bindu`` command line."""
