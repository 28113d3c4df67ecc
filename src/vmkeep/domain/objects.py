"""Names and facts about stored objects, shared by stores and the repository."""

from __future__ import annotations

import re
from dataclasses import dataclass

from vmkeep.domain.errors import UsageError

_NAME_RE = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One object in a store: its name (``data/ab/ab12...``) and stored size in bytes."""

    name: str
    size: int


def validate_object_name(name: str) -> str:
    """Return ``name`` if it is a safe relative object name, else raise UsageError.

    Safe names are ``/``-separated segments of ``[A-Za-z0-9._-]``, with no empty, ``.`` or
    ``..`` segment, so no backend can be tricked into writing outside its root.
    """
    if not _NAME_RE.match(name) or (
        "." in name and any(part in (".", "..") for part in name.split("/"))
    ):
        raise UsageError(f"invalid object name {name!r}")
    return name
