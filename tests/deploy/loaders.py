"""Reading the deployment files the tests check: rendered overlays, compose, the Dockerfile."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tests.support.procs import REPO_ROOT

K8S_DIR = REPO_ROOT / "infra" / "k8s"
OVERLAYS = ("dev", "prod")
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
# One multi-stage Dockerfile; each service image is one of its targets.
DOCKERFILE = REPO_ROOT / "Dockerfile"
IMAGE_TARGETS = ("gateway", "worker", "trainer", "pacs")
POD_OWNERS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}


def kubectl() -> str:
    """kubectl on PATH; scripts/system-deps.sh installs it where it is missing."""
    path = shutil.which("kubectl")
    if path is None:
        raise RuntimeError("kubectl is not on PATH: run `bash scripts/system-deps.sh`")
    return path


def render(kustomization_dir: Path) -> list[dict]:
    """`kubectl kustomize DIR`, as a list of objects."""
    result = subprocess.run([kubectl(), "kustomize", str(kustomization_dir)], capture_output=True,
                            text=True, check=False, timeout=120)
    if result.returncode != 0:
        raise AssertionError(f"kubectl kustomize {kustomization_dir} failed:\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def pod_template(owner: dict) -> dict:
    """The pod template (metadata and spec) of an object that runs pods, CronJobs included."""
    if owner["kind"] == "CronJob":
        return owner["spec"]["jobTemplate"]["spec"]["template"]
    return owner["spec"]["template"]


def pod_specs(objects: list[dict]) -> Iterator[tuple[dict, dict]]:
    """(owner object, pod spec) for every object that runs pods."""
    for obj in objects:
        if obj["kind"] in POD_OWNERS or obj["kind"] == "CronJob":
            yield obj, pod_template(obj)["spec"]


def containers(pod_spec: dict) -> list[dict]:
    return [*pod_spec.get("initContainers", []), *pod_spec["containers"]]


def find(objects: list[dict], kind: str, name: str) -> dict:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def load_compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@dataclass
class DockerStage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        return [rest for key, rest in self.instructions if key == keyword]


def dockerfile_stages(path: Path = DOCKERFILE) -> list[DockerStage]:
    """The stages of a Dockerfile: FROM (with ARG defaults resolved) and each instruction."""
    logical, pending = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    arg_defaults: dict[str, str] = {}
    stages: list[DockerStage] = []
    for instruction in logical:
        keyword, _, rest = instruction.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "ARG" and not stages and "=" in rest:
            name, _, value = rest.partition("=")
            arg_defaults[name] = value
        elif keyword == "FROM":
            words = shlex.split(rest)
            base = words[0]
            for name, value in arg_defaults.items():
                base = base.replace("${" + name + "}", value)
            stage_name = words[2].lower() if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(DockerStage(base, stage_name))
        else:
            stages[-1].instructions.append((keyword, rest))
    return stages


@dataclass
class ImageTarget:
    """What `docker build --target NAME` makes: the named stage and the stages it is built FROM,
    the first of them on an outside image (`base`)."""

    name: str
    chain: list[DockerStage]

    @property
    def base(self) -> str:
        return self.chain[0].base

    def args(self, keyword: str) -> list[str]:
        """Every `keyword` instruction along the chain, in build order."""
        return [rest for stage in self.chain for rest in stage.args(keyword)]

    def last(self, keyword: str) -> str | None:
        """The value in force in the image: the last such instruction (USER, WORKDIR, ...)."""
        found = self.args(keyword)
        return found[-1] if found else None

    def command(self) -> list[str]:
        """ENTRYPOINT + CMD (exec form) as the container starts them. As in Docker, a stage that
        sets ENTRYPOINT drops the CMD it inherited; a CMD of its own stays."""
        entrypoint: list[str] = []
        cmd: list[str] = []
        for stage in self.chain:
            cmd_here = False
            for key, rest in stage.instructions:
                if key == "ENTRYPOINT":
                    entrypoint = json.loads(rest)
                    if not cmd_here:
                        cmd = []
                elif key == "CMD":
                    cmd, cmd_here = json.loads(rest), True
        return [*entrypoint, *cmd]


def stage_chain(stages: list[DockerStage], name: str) -> list[DockerStage]:
    """The stage called `name` and those it is built FROM, the first one first (a FROM names an
    earlier stage, else an outside image)."""
    index = next((i for i, s in enumerate(stages) if s.name == name), None)
    if index is None:
        raise AssertionError(f"the Dockerfile has no stage {name!r}")
    chain = [stages[index]]
    while True:
        earlier = {s.name: i for i, s in enumerate(stages[:index]) if s.name}
        index = earlier.get(chain[0].base.lower(), -1)
        if index < 0:
            return chain
        chain.insert(0, stages[index])


def image_target(name: str, path: Path = DOCKERFILE) -> ImageTarget:
    return ImageTarget(name, stage_chain(dockerfile_stages(path), name))


def copied_from_stages(target: ImageTarget) -> list[tuple[str, list[str]]]:
    """(stage, [source..., destination]) of the COPY --from=STAGE instructions along the chain."""
    found = []
    for rest in target.args("COPY"):
        words = shlex.split(rest)
        origin = next((w.partition("=")[2] for w in words if w.startswith("--from=")), None)
        if origin is not None:
            found.append((origin.lower(), [w for w in words if not w.startswith("--")]))
    return found


def copy_sources(stage: DockerStage | ImageTarget) -> list[str]:
    """Sources of the stage's COPY instructions that read the build context."""
    sources = []
    for rest in stage.args("COPY"):
        words = shlex.split(rest)
        if any(word.startswith("--from") for word in words):
            continue
        sources += [w for w in words[:-1] if not w.startswith("--")]
    return sources


def uv_bin() -> str:
    """uv on PATH; `make install` installs it where it is missing."""
    path = shutil.which("uv")
    if path is None:
        raise RuntimeError("uv is not on PATH: `make install` installs it")
    return path
