"""Settings come from CXR_-prefixed environment variables; production refuses default secrets."""

import pytest
from pydantic import SecretStr, ValidationError, model_validator

from shared.settings import InsecureSettingError, SharedSettings, get_settings, require_real_secret
from shared.storage import get_storage


@pytest.fixture
def fresh_settings():
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_the_storage_the_environment_names_is_the_one_written(monkeypatch, fresh_settings,
                                                             tmp_path):
    monkeypatch.setenv("CXR_STORAGE_BACKEND", "local")
    monkeypatch.setenv("CXR_STORAGE_ROOT", str(tmp_path / "prefixed"))
    monkeypatch.setenv("STORAGE_ROOT", str(tmp_path / "unprefixed"))  # unprefixed: ignored
    get_storage(get_settings()).put("uploads/job-1/film.png", b"film")
    assert (tmp_path / "prefixed" / "uploads" / "job-1" / "film.png").read_bytes() == b"film"
    assert not (tmp_path / "unprefixed").exists()


def test_invalid_values_are_refused(monkeypatch):
    monkeypatch.setenv("CXR_STORAGE_BACKEND", "ftp")
    with pytest.raises(ValidationError):
        SharedSettings()


class _ServiceSettings(SharedSettings):
    api_secret: SecretStr = SecretStr("change-me")

    @model_validator(mode="after")
    def _real_secret_in_production(self):
        require_real_secret(self.env, "CXR_API_SECRET", self.api_secret, default="change-me")
        return self


def test_production_refuses_default_and_empty_secrets(monkeypatch):
    monkeypatch.setenv("CXR_ENV", "production")
    with pytest.raises(ValidationError, match="CXR_API_SECRET"):
        _ServiceSettings()
    monkeypatch.setenv("CXR_API_SECRET", "")
    with pytest.raises(ValidationError, match="CXR_API_SECRET"):
        _ServiceSettings()
    monkeypatch.setenv("CXR_API_SECRET", "a-real-one")
    assert _ServiceSettings().api_secret.get_secret_value() == "a-real-one"


def test_development_accepts_default_secrets(monkeypatch):
    monkeypatch.setenv("CXR_ENV", "development")
    monkeypatch.delenv("CXR_API_SECRET", raising=False)
    assert _ServiceSettings().api_secret.get_secret_value() == "change-me"
    with pytest.raises(InsecureSettingError):
        require_real_secret("production", "X", None)
