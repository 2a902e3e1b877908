"""Write `docs/settings.md` from the settings classes, so the settings are documented in one place.

    python -m scripts.settings_doc            # rewrite docs/settings.md
    python -m scripts.settings_doc --check    # exit 1 when docs/settings.md is out of date
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import sys
from pathlib import Path

from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "settings.md"
# The modules holding settings classes, as globs from the repository root: the shared settings, one
# `settings.py` per service (a new service's is found by the glob), and the local stack.
SETTINGS_MODULES = ("shared/settings.py", "services/*/settings.py",
                    "scripts/stack.py")
# Section titles by the folder holding the module, in page order; other folders follow by name.
TITLES = {"shared": "Every service", "gateway": "Gateway", "worker": "Inference worker",
          "trainer": "Trainer", "pacs": "DICOM node", "scripts": "Local stack, `make up`"}


def settings_classes(path: Path) -> list[type[BaseSettings]]:
    """The settings classes defined in the module at `path` (not those it imports)."""
    relative = path.relative_to(ROOT).with_suffix("")
    module = importlib.import_module(".".join(relative.parts))
    return [cls for _, cls in inspect.getmembers(module, inspect.isclass)
            if issubclass(cls, BaseSettings) and cls.__module__ == module.__name__]


def sections() -> list[tuple[str, type[BaseSettings], type[BaseSettings] | None]]:
    """(title, class, parent) for each settings class, shared first: a class documents only the
    fields it adds to its parent, the nearest of its bases that is on the page too."""
    found: list[tuple[Path, type[BaseSettings]]] = []
    for pattern in SETTINGS_MODULES:
        for path in sorted(ROOT.glob(pattern)):
            classes = settings_classes(path)
            if len(classes) > 1:
                raise ValueError(f"{path.relative_to(ROOT)} defines {len(classes)} settings "
                                 "classes; a settings module holds one")
            found.extend((path, cls) for cls in classes)
    order = list(TITLES)
    found.sort(key=lambda item: (order.index(item[0].parent.name)
                                 if item[0].parent.name in order else len(order),
                                 item[0].parent.name))
    documented = {cls for _, cls in found}
    result = []
    for path, cls in found:
        parent = next((base for base in cls.__mro__[1:] if base in documented), None)
        title = TITLES.get(path.parent.name, path.parent.name)
        result.append((f"{title} (`{path.relative_to(ROOT).as_posix()}`)", cls, parent))
    return result


SECTIONS = sections()

HEADER = """# Settings

Every service reads environment variables with the prefix `CXR_` through one pydantic-settings
class in its `settings.py` (`get_settings()`); a service's class adds its own fields to the shared
ones of `shared/settings.py`.
`CXR_ENV=production` refuses default secrets and a missing TLS certificate at start-up. This
page is generated from the classes by `python -m scripts.settings_doc`; a test fails when it is
out of date.
"""


def env_name(settings: type[BaseSettings], field_name: str) -> str:
    alias = settings.model_fields[field_name].validation_alias
    prefix = settings.model_config.get("env_prefix", "")
    return (alias if isinstance(alias, str) else prefix + field_name).upper()


def default_text(settings: type[BaseSettings], field_name: str) -> str:
    field = settings.model_fields[field_name]
    if field.default is PydanticUndefined and field.default_factory is None:
        return "(required)"
    if field.default_factory is not None:
        return "(computed)"
    value = field.default
    if hasattr(value, "get_secret_value"):
        return "(a development default)" if value.get_secret_value() else ""
    if value is None or value == "":
        return ""
    if isinstance(value, Path):
        # A path under the repository is shown relative to it, the same wherever it is checked out.
        value = value.relative_to(ROOT) if value.is_relative_to(ROOT) else value
        return f"`{value}`"
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return f"`{text}`"


def own_fields(settings: type[BaseSettings], parent: type[BaseSettings] | None) -> list[str]:
    inherited = set(parent.model_fields) if parent else set()
    return [name for name in settings.model_fields if name not in inherited]


def render() -> str:
    parts = [HEADER]
    for title, settings, parent in SECTIONS:
        parts.append(f"\n## {title}\n\n| variable | default | meaning |\n|---|---|---|")
        for name in own_fields(settings, parent):
            description = (settings.model_fields[name].description or "").replace("|", "\\|")
            parts.append(f"| `{env_name(settings, name)}` | {default_text(settings, name)} | "
                         f"{' '.join(description.split())} |")
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check the page is current")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not DOC.is_file() or DOC.read_text() != text:
            print(f"{DOC.relative_to(ROOT)} is out of date: run python -m scripts.settings_doc")
            return 1
        return 0
    DOC.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
