"""Secrets kept out of what leaves the run for the trackers and the log: the password or token of a
URI's user info (`https://user:TOKEN@host` -> `https://user:***@host`), and every value that came
from an environment variable (`${oc.env:NAME}`, directly or through another interpolation), shown
as the interpolation that produced it. The run's own record (.hydra/config.yaml) keeps its
interpolations unresolved, so it holds no such value either."""

from __future__ import annotations

import re

HIDDEN = "***"
# scheme://user:secret@ -- the secret ends at the last @ before the host (a token may hold @ or :)
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^/:@\s]*:)(?P<secret>[^/\s]*)@")


def uri(text):
    """`text` with the password (token) of any URI's user info replaced by ***."""
    if not isinstance(text, str):
        return text
    return _USERINFO.sub(lambda m: f"{m['head']}{HIDDEN}@", text)


def config(cfg) -> dict:
    """The resolved config as a plain mapping, for the trackers: a value that an `oc.env`
    interpolation produced (or that holds one's value) is replaced by its interpolation text, and
    URIs lose their passwords."""
    from omegaconf import OmegaConf

    raw = OmegaConf.to_container(cfg, resolve=False)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    secrets = {str(value) for value in _from_environment(raw, resolved) if str(value)}
    return _redacted(raw, resolved, secrets)


def _from_environment(raw, resolved):
    """The resolved values of the nodes whose interpolation reads an environment variable."""
    if isinstance(raw, dict) and isinstance(resolved, dict):
        for key, value in raw.items():
            yield from _from_environment(value, resolved.get(key))
    elif isinstance(raw, list) and isinstance(resolved, list):
        for value, done in zip(raw, resolved):
            yield from _from_environment(value, done)
    elif isinstance(raw, str) and "oc.env" in raw and resolved is not None:
        yield resolved


def _redacted(raw, resolved, secrets: set):
    if isinstance(raw, dict) and isinstance(resolved, dict):
        return {key: _redacted(raw.get(key), value, secrets) for key, value in resolved.items()}
    if isinstance(raw, list) and isinstance(resolved, list):
        return [_redacted(r, value, secrets) for r, value in zip(raw, resolved)]
    if isinstance(raw, str) and "${" in raw and ("oc.env" in raw or any(s in str(resolved) for s in secrets)):
        return uri(raw)  # where the value comes from, not the value
    return uri(resolved)
