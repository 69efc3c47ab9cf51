"""Policies registered by name: a user's policy can be added, used by name, and removed again."""

from __future__ import annotations

import pytest

from odrive.core.registry import Registry
from odrive.errors import UnknownNameError


def test_add_get_remove() -> None:
    reg: Registry[type] = Registry("scheduler")
    reg.add("mine", dict)
    assert reg.get("mine") is dict
    reg.add("mine", dict)  # the same object again: a no-op
    with pytest.raises(ValueError, match="'mine' is already registered"):
        reg.add("mine", list)
    reg.remove("mine")
    with pytest.raises(UnknownNameError, match=r"unknown scheduler 'mine'; registered: \(none\)"):
        reg.get("mine")
    with pytest.raises(UnknownNameError, match="unknown scheduler 'mine'"):
        reg.remove("mine")
