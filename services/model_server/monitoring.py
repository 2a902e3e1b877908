"""`--monitoring_config_file`: TF Serving's text-format MonitoringConfig (where, and whether, the
REST port serves Prometheus metrics).

The tensorflow-serving-api wheel ships no module for monitoring_config.proto, so its two messages
are declared here from that file's fields (same package, names and numbers).
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format

from services.model_server.errors import invalid_argument
from services.model_server.metrics import METRICS_PATH

_FIELD = descriptor_pb2.FieldDescriptorProto


def _monitoring_config_class():
    proto = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_serving/config/monitoring_config.proto",
        package="tensorflow.serving",
        syntax="proto3",
    )
    prometheus = proto.message_type.add(name="PrometheusConfig")
    optional = _FIELD.LABEL_OPTIONAL
    prometheus.field.add(name="enable", number=1, type=_FIELD.TYPE_BOOL, label=optional)
    prometheus.field.add(name="path", number=2, type=_FIELD.TYPE_STRING, label=optional)
    monitoring = proto.message_type.add(name="MonitoringConfig")
    monitoring.field.add(
        name="prometheus_config",
        number=1,
        type=_FIELD.TYPE_MESSAGE,
        type_name=".tensorflow.serving.PrometheusConfig",
        label=optional,
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("tensorflow.serving.MonitoringConfig")
    )


MonitoringConfig = _monitoring_config_class()


def metrics_path(config_file: str | Path | None) -> str | None:
    """The metrics page's path; None when a monitoring config turns Prometheus off.

    Without a config file the page is served at TF Serving's default path (TF Serving itself
    serves none then; serving it anyway costs nothing locally).
    """
    if not config_file:
        return METRICS_PATH
    try:
        config = text_format.Parse(Path(config_file).read_text(), MonitoringConfig())
    except text_format.ParseError as exc:
        raise invalid_argument(f"{config_file} is not a text MonitoringConfig: {exc}") from exc
    prometheus = config.prometheus_config
    if not prometheus.enable:
        return None
    return prometheus.path or METRICS_PATH
