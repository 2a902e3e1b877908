"""Settings come from CXR_-prefixed environment variables; production refuses default secrets."""

import pytest
from pydantic import SecretStr, ValidationError, model_validator

from shared.settings import InsecureSettingError, SharedSettings, get_settings, require_real_secret


@pytest.fixture
def fresh_settings():
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_environment_variables_with_prefix_override_defaults(monkeypatch, fresh_settings):
    monkeypatch.setenv("CXR_STORAGE_BACKEND", "s3")
    monkeypatch.setenv("CXR_S3_BUCKET", "xrays")
    monkeypatch.setenv("CXR_MAX_UPLOAD_BYTES", "1234")
    monkeypatch.setenv("MAX_UPLOAD_BYTES", "999")  # unprefixed: ignored
    settings = get_settings()
    assert settings.storage_backend == "s3"
    assert settings.s3_bucket == "xrays"
    assert settings.max_upload_bytes == 1234


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
