"""Bit-accurate golden models: the specification of every datapath block."""

from .config import DEFAULT, DatapathConfig  # noqa: F401
