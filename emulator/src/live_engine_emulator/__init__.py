"""A standalone stand-in for Tencent's Live Engine REST API (SPEC §5).

It shares no request or response code with the gateway's upstream client, so a bug cannot hide
by being on both sides: it has its own UserSig verifier, its own wire handling, its own limits.
"""

from live_engine_emulator.server import create_emulator_app, serve_emulator
from live_engine_emulator.state import Emulator

__all__ = ["Emulator", "create_emulator_app", "serve_emulator"]
