"""One declarative file per Hugging Face family (see `schema`). A new file here is a new family: the registry and the
tests (parametrised over it) find it by itself."""

from __future__ import annotations

import importlib
import pkgutil

from ..errors import UnsupportedModelError
from .schema import Family

FAMILIES: dict[str, Family] = {}  # model_type -> family
for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name == "schema":
        continue
    _family = importlib.import_module(f"{__name__}.{_info.name}").FAMILY
    for _model_type in _family.model_types:
        FAMILIES[_model_type] = _family


def family_for(model_type: str | None) -> Family:
    """The family of a config's `model_type`, or UnsupportedModelError listing the known ones."""
    family = FAMILIES.get(model_type or "")
    if family is None:
        raise UnsupportedModelError(
            f"unknown Hugging Face model family '{model_type}': netgraft grows {', '.join(sorted(FAMILIES))}; a "
            f"family is one declarative file in netgraft/families (see README, 'Adding a family')")
    return family
