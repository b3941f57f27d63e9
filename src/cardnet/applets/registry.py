"""Applets by name, for configuration files (``applets = ["echo", "notes"]``)."""

from __future__ import annotations

from collections.abc import Callable

from cardnet.applets.authority import AuthorityApplet
from cardnet.applets.counter import CounterApplet
from cardnet.applets.echo import EchoApplet
from cardnet.applets.fairx import TtpApplet
from cardnet.applets.gate import GateApplet
from cardnet.applets.notes import NotesApplet
from cardnet.applets.pingpong import PingPongApplet
from cardnet.applets.smc import SmcApplet
from cardnet.applets.speed.conductor import ConductorApplet
from cardnet.applets.speed.purse import PurseApplet
from cardnet.applets.speed.sam import SamApplet
from cardnet.applets.trn import TrnApplet
from cardnet.card import Applet

APPLETS: dict[str, Callable[[], Applet]] = {
    "counter": CounterApplet,
    "echo": EchoApplet,
    "notes": NotesApplet,
    "pingpong": PingPongApplet,
    "trn": TrnApplet,
    "gate": GateApplet,
    "authority": AuthorityApplet,
    "ttp": TtpApplet,
    "purse": PurseApplet,
    "speed": ConductorApplet,
    "sam": SamApplet,
    "smc": SmcApplet,
}


def make_applets(names: list[str]) -> list[Applet]:
    unknown = [n for n in names if n not in APPLETS]
    if unknown:
        raise KeyError(f"unknown applet(s) {', '.join(unknown)}: choose from {', '.join(sorted(APPLETS))}")
    return [APPLETS[n]() for n in names]
