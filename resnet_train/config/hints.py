"""A schema field's hint: text appended to the one-line error for a wrong value of that key."""

from __future__ import annotations

from dataclasses import field

from omegaconf import MISSING


def with_hint(text: str, default=MISSING, factory=None):
    """A field whose wrong value's error ends with `text` (store.wrong_type)."""
    if factory is not None:
        return field(default_factory=factory, metadata={"hint": text})
    return field(default=default, metadata={"hint": text})


def hint(object_type, key) -> str:
    """The schema's hint for a key of a config node of `object_type` ('' if none)."""
    import dataclasses

    if not dataclasses.is_dataclass(object_type):
        return ""
    for f in dataclasses.fields(object_type):
        if f.name == key:
            return f.metadata["hint"] if "hint" in f.metadata else ""
    return ""
