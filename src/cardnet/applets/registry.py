"""Applets by name, for configuration files (``applets = ["echo", "notes"]``)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import cast

from cardnet.card import Applet

# name -> (module, class). A host imports only the applets its cards run: importing them all cost every host
# process's start some 0.1 s of CPU (the smc applet alone builds its function registry).
_WHERE: dict[str, tuple[str, str]] = {
    "counter": ("cardnet.applets.counter", "CounterApplet"),
    "echo": ("cardnet.applets.echo", "EchoApplet"),
    "notes": ("cardnet.applets.notes", "NotesApplet"),
    "pingpong": ("cardnet.applets.pingpong", "PingPongApplet"),
    "trn": ("cardnet.applets.trn", "TrnApplet"),
    "gate": ("cardnet.applets.gate", "GateApplet"),
    "authority": ("cardnet.applets.authority", "AuthorityApplet"),
    "ttp": ("cardnet.applets.fairx", "TtpApplet"),
    "purse": ("cardnet.applets.speed.purse", "PurseApplet"),
    "speed": ("cardnet.applets.speed.conductor", "ConductorApplet"),
    "sam": ("cardnet.applets.speed.sam", "SamApplet"),
    "smc": ("cardnet.applets.smc", "SmcApplet"),
}


def _factory(module: str, cls: str) -> Callable[[], Applet]:
    def make() -> Applet:
        return cast(Applet, getattr(importlib.import_module(module), cls)())

    make.__qualname__ = make.__name__ = cls
    return make


APPLETS: dict[str, Callable[[], Applet]] = {name: _factory(*where) for name, where in _WHERE.items()}


def import_applets(names: Iterable[str]) -> None:
    """Import these applets' modules, which registers their message types (e.g. to look one up by name)."""
    for name in names:
        importlib.import_module(_WHERE[name][0])


def make_applets(names: list[str]) -> list[Applet]:
    unknown = [n for n in names if n not in APPLETS]
    if unknown:
        raise KeyError(f"unknown applet(s) {', '.join(unknown)}: choose from {', '.join(sorted(APPLETS))}")
    return [APPLETS[n]() for n in names]
