"""The methods, by name: each a :class:`~pbc.methods.base.Method` whose hooks the stages
call.  Adding a method is a module with a ``Method`` subclass and one line in
:data:`METHODS` (or a call of :func:`register`)."""

from __future__ import annotations

from pbc.methods.base import ELBOMethod, Method
from pbc.methods.dc import DeepCompression
from pbc.methods.ghs import GHS
from pbc.methods.gnj import GNJ
from pbc.methods.none import Plain
from pbc.methods.svd import SVD
from pbc.methods.sws import SoftWeightSharing

METHODS: dict[str, Method] = {m.name: m for m in (
    Plain(), GNJ(), GHS(), SVD(), SoftWeightSharing(), DeepCompression())}

__all__ = ["METHODS", "ELBOMethod", "Method", "get", "names", "register"]


def names() -> tuple[str, ...]:
    """The registered methods' names, in registration order."""
    return tuple(METHODS)


def get(name: str) -> Method:
    """The method called ``name``; ``ValueError`` naming the choices otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown prior {name!r}; choose from {list(METHODS)}") from None


def register(method: Method) -> Method:
    """Add (or replace) a method under its name; returns it."""
    METHODS[method.name] = method
    return method
