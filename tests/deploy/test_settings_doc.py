"""docs/settings.md is generated from the settings classes: it must be current, and every field
must say what it means."""

from __future__ import annotations

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



def test_page_does_not_depend_on_where_the_repository_is():
    assert str(settings_doc.ROOT) not in settings_doc.render()
