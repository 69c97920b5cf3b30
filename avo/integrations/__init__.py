"""Hooks that put `avo.attention` into other libraries' models (imported explicitly, one per library)."""
