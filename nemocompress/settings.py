"""Settings files: the one reader of a YAML mapping of settings (distill configs, recipes, elastic runs)."""

from __future__ import annotations

from pathlib import Path

import yaml

__all__ = ["read_settings"]


def read_settings(
    path: str | Path, error: type[Exception], what: str = "config file", example: str = "steps: 100"
) -> dict:
    """The mapping in the YAML file at ``path``; a missing file, bad YAML or a non-mapping raises ``error``
    with one line naming the problem."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {path} does not exist")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise error(f"{path} is not valid YAML: {e}") from None
    if not isinstance(values, dict):
        raise error(f"{path} must hold a mapping of settings, e.g. '{example}'")
    return values
