"""`studio train`'s config flags, made from the fields' settings (studio.engine.fields).

Every field declared with a setting becomes ``--its-name`` (or its setting's ``flag``): choices
from the setting, ``--x/--no-x`` for a switch, the help text the window shows as a tooltip.
A flag given on the command line overrides the field of ``--config``; one not given leaves it.
"""

from __future__ import annotations

import argparse
from typing import Any

from studio.engine.config import SECTIONS, all_described
from studio.engine.fields import Described

SECTION_TITLES = {"data": "data handling", "head": "classifier head", "optim": "optimizer",
                  "lora": "LoRA adapters"}


def config_flags() -> list[Described]:
    """Every field that has a flag, section by section."""
    return [item for item in all_described() if item.flag is not None]


def add_config_flags(parser: argparse.ArgumentParser,
                     custom: dict[str, dict[str, Any]] | None = None,
                     groups: dict[str, Any] | None = None) -> None:
    """One flag per config field; ``custom`` replaces a flag's argparse options (by flag);
    ``groups`` (title → argument group) holds groups the caller already made."""
    groups = dict(groups or {})
    for item in config_flags():
        found = item.setting
        title = found.tab.lower() if found.tab else SECTION_TITLES[item.section]
        group = groups.get(title) or groups.setdefault(title, parser.add_argument_group(title))
        assert item.flag is not None
        options: dict[str, Any] = {"help": _help(item), "default": None}
        if item.kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif found.choices:
            options["choices"] = list(found.values)
        else:
            options["type"] = item.kind
            options["metavar"] = found.metavar or "N"
        options.update((custom or {}).get(item.flag, {}))
        group.add_argument("--" + item.flag, **options)


def flag_changes(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """section → {field: value} for every config flag given on the command line."""
    changes: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
    for item in config_flags():
        assert item.flag is not None
        value = getattr(args, item.flag.replace("-", "_"), None)
        if value is not None:
            changes[item.section][item.name] = value
    return changes


def flag_for(section: str, name: str) -> str | None:
    """``--batch-size`` for ("train", "batch_size"): to name the flag in an error."""
    for item in config_flags():
        if (item.section, item.name) == (section, name):
            return f"--{item.flag}"
    return None


def _help(item: Described) -> str:
    found, default = item.setting, item.default
    if item.kind is bool:
        shown = "on" if default else "off"
    elif found.off and (default is None or default == found.low):
        shown = found.off
    else:
        shown = str(default)
    return f"{found.help} (default {shown})".replace("%", "%%")
