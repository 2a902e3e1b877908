"""TF Serving's command line as docker-compose and the k8s Deployment give it, and its protos."""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from tests.deploy.loaders import find


@dataclass(frozen=True)
class ServingCommand:
    image: str
    entrypoint: tuple[str, ...]
    flags: tuple[str, ...]

    def flag(self, name: str) -> str:
        values = [f.split("=", 1)[1] for f in self.flags if f.startswith(f"--{name}=")]
        assert len(values) == 1, f"--{name} given {len(values)} times"
        return values[0]


def from_compose(compose: dict) -> ServingCommand:
    service = compose["services"]["tf-serving"]
    return ServingCommand(service["image"], tuple(service["entrypoint"]), tuple(service["command"]))


def from_kubernetes(objects: list[dict]) -> ServingCommand:
    pod = find(objects, "Deployment", "tf-serving")["spec"]["template"]["spec"]
    container = next(c for c in pod["containers"] if c["name"] == "tf-serving")
    return ServingCommand(container["image"], tuple(container["command"]), tuple(container["args"]))


def monitoring_config_class():
    """tensorflow.serving.MonitoringConfig, built from the fields of TF Serving's
    monitoring_config.proto (the tensorflow-serving-api wheel does not ship that module)."""
    proto = descriptor_pb2.FileDescriptorProto(
        name="cxr_tests/monitoring_config.proto", package="tensorflow.serving", syntax="proto3")
    prometheus = proto.message_type.add(name="PrometheusConfig")
    field = descriptor_pb2.FieldDescriptorProto
    prometheus.field.add(name="enable", number=1, type=field.TYPE_BOOL,
                         label=field.LABEL_OPTIONAL)
    prometheus.field.add(name="path", number=2, type=field.TYPE_STRING,
                         label=field.LABEL_OPTIONAL)
    monitoring = proto.message_type.add(name="MonitoringConfig")
    monitoring.field.add(name="prometheus_config", number=1, type=field.TYPE_MESSAGE,
                         type_name=".tensorflow.serving.PrometheusConfig",
                         label=field.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("tensorflow.serving.MonitoringConfig"))
