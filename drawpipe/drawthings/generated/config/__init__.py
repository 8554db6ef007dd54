"""FlatBuffers code for config.fbs (see ../__init__.py)."""
