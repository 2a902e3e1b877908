"""Model configuration: TF Serving's text-format `ModelServerConfig` and its version policies.

A config comes either from `--model_config_file` or from `--model_name`/`--model_base_path`
(one model, policy `latest { num_versions: 1 }`, as TF Serving builds it from those flags).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from services.model_server.errors import invalid_argument

ModelServerConfig = model_server_config_pb2.ModelServerConfig
ModelConfig = model_server_config_pb2.ModelConfig

SUPPORTED_PLATFORM = "tensorflow"


def single_model_config(name: str, base_path: str) -> ModelServerConfig:
    """The config TF Serving derives from `--model_name` and `--model_base_path`."""
    config = ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name = name
    model.base_path = base_path
    model.model_platform = SUPPORTED_PLATFORM
    return config


def parse_model_config(text: str) -> ModelServerConfig:
    """Parse a text-format `ModelServerConfig`; INVALID_ARGUMENT when it is not one."""
    try:
        config = text_format.Parse(text, ModelServerConfig())
    except text_format.ParseError as exc:
        raise invalid_argument(
            f"model config is not a valid text ModelServerConfig: {exc}"
        ) from exc
    validate_model_config(config)
    return config


def read_model_config_file(path: str | Path) -> ModelServerConfig:
    return parse_model_config(Path(path).read_text())


def validate_model_config(config: ModelServerConfig) -> None:
    """Refuse what this server cannot serve, with TF Serving's kind of error (INVALID_ARGUMENT)."""
    if config.WhichOneof("config") == "custom_model_config":
        raise invalid_argument("custom_model_config is not supported; use model_config_list")
    seen: set[str] = set()
    for model in config.model_config_list.config:
        if not model.name:
            raise invalid_argument("every model config needs a name")
        if model.name in seen:
            raise invalid_argument(f"model name {model.name!r} appears more than once")
        seen.add(model.name)
        if not model.base_path or model.base_path.rstrip("/") == "s3:":
            raise invalid_argument(f"model {model.name!r} has no base_path")
        platform = model.model_platform or SUPPORTED_PLATFORM
        if platform != SUPPORTED_PLATFORM:
            raise invalid_argument(
                f"model {model.name!r}: model_platform {platform!r} is not supported "
                f"(only {SUPPORTED_PLATFORM!r})"
            )
        for label, version in model.version_labels.items():
            if version <= 0:
                raise invalid_argument(f"model {model.name!r}: label {label!r} needs a version > 0")


def wanted_versions(model: ModelConfig, candidates: Iterable[int]) -> set[int]:
    """The versions the model's policy wants loaded, out of the versions that can be loaded."""
    candidates = sorted(set(candidates))
    policy = model.model_version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return set(candidates)
    if choice == "specific":
        return set(policy.specific.versions) & set(candidates)
    num_versions = policy.latest.num_versions if choice == "latest" else 0
    return set(candidates[-max(num_versions, 1) :])
