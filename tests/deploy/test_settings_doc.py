"""docs/settings.md is generated from the settings classes: it must be current, and every field
must say what it means."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from scripts import settings_doc


def test_settings_page_is_current(capsys):
    assert settings_doc.main(["--check"]) == 0, capsys.readouterr().out


def test_check_reports_a_stale_page(tmp_path, monkeypatch):
    stale = tmp_path / "settings.md"
    stale.write_text(settings_doc.render().replace("CXR_REDIS_URL", "CXR_REDIS_ADDRESS"))
    monkeypatch.setattr(settings_doc, "DOC", stale)
    monkeypatch.setattr(settings_doc, "ROOT", tmp_path)
    assert settings_doc.main(["--check"]) == 1
    stale.unlink()
    assert settings_doc.main(["--check"]) == 1


@pytest.mark.parametrize("title, settings, parent", settings_doc.SECTIONS,
                         ids=[cls.__name__ for _, cls, _ in settings_doc.SECTIONS])
def test_every_field_has_a_description(title, settings, parent):
    missing = [settings_doc.env_name(settings, name)
               for name in settings_doc.own_fields(settings, parent)
               if not (settings.model_fields[name].description or "").strip()]
    assert not missing, f"{title}: no description for {missing}"


# A class deriving from a settings class: `class X(BaseSettings)`, `class X(SharedSettings)`, ...
SETTINGS_CLASS = re.compile(r"^class \w+\((?:\w+\.)?\w*Settings\b", re.MULTILINE)


def test_every_settings_class_is_on_the_page():
    documented = {Path(inspect.getsourcefile(cls)) for _, cls, _ in settings_doc.SECTIONS}
    for folder in ("shared", "services", "scripts"):
        for path in (settings_doc.ROOT / folder).rglob("*.py"):
            if SETTINGS_CLASS.search(path.read_text()):
                assert path in documented, (
                    f"{path.relative_to(settings_doc.ROOT)} defines settings the page does not "
                    "list: a service's settings go into its settings.py")


def test_page_does_not_depend_on_where_the_repository_is():
    assert str(settings_doc.ROOT) not in settings_doc.render()
