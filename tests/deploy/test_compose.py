"""docker-compose.yml and the Dockerfile, checked without a Docker engine: the file parses, what
it mounts and builds exists, Kafka is Apache Kafka 4.x in KRaft mode, and every SHOPSCORE_*
variable it sets is one the service reads, with a value the service accepts."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from stream.kafka.admin import ALL_TOPICS
from stream.settings import Settings

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"
_VARIABLE = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}|\$(\w+)")


def interpolate(value: Any) -> Any:
    """Compose's interpolation with an empty shell: ``${X:-default}`` is the default and
    ``$$`` a literal ``$``. A variable without a default would break a plain `compose up`."""
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        assert match.group(3) is None and match.group(2) is not None, (
            f"{match.group(0)} in docker-compose.yml has no default"
        )
        return match.group(2)

    return "$".join(_VARIABLE.sub(substitute, part) for part in value.split("$$"))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(interpolate(value)) for key, value in env.items()}


def bind_mounts(service: dict[str, Any]) -> list[tuple[Path, str]]:
    """(host path, container path) of every bind mount; named volumes are left out."""
    out = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            out.append(((REPO / source).resolve(), target))
    return out


def test_services(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) >= {
        "kafka",
        "kafka-init",
        "worker",
        "producer",
        "prometheus",
        "grafana",
    }
    for name, service in compose["services"].items():
        for dependency in service.get("depends_on", []):
            assert dependency in compose["services"], (name, dependency)
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in compose.get("volumes", {}), (name, source)


def test_kafka_is_apache_kafka_4_in_kraft_mode(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    image, _, tag = kafka["image"].partition(":")
    assert image == "apache/kafka" and int(tag.split(".")[0]) == 4, kafka["image"]
    env = environment(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@kafka:9093"
    assert env["CLUSTER_ID"]
    for service in compose["services"].values():  # no ZooKeeper anywhere
        assert "zookeeper" not in str(service.get("image", "")).lower()
        assert not [key for key in environment(service) if "ZOOKEEPER" in key]
    listeners = env["KAFKA_LISTENERS"].split(",")
    assert any(listener.startswith("CONTROLLER://") for listener in listeners)
    assert compose["services"]["kafka-init"]["image"] == kafka["image"]


def test_every_shopscore_variable_is_a_setting_the_service_reads(compose: dict[str, Any]) -> None:
    known = Settings.env_names()
    for name, service in compose["services"].items():
        env = environment(service)
        unknown = {key for key in env if key.startswith("SHOPSCORE_")} - known
        assert not unknown, f"service {name} sets variables shopscore never reads: {unknown}"
        if any(key.startswith("SHOPSCORE_") for key in env):
            Settings.from_env(env)  # values the service accepts (raises ConfigError otherwise)
    dockerfile_env = re.findall(r"\b(SHOPSCORE_\w+)=", (REPO / "Dockerfile").read_text())
    assert dockerfile_env and set(dockerfile_env) <= known


def test_workers_reach_kafka_and_prometheus_reaches_the_workers(compose: dict[str, Any]) -> None:
    services = compose["services"]
    kafka_env = environment(services["kafka"])
    worker = Settings.from_env(environment(services["worker"]))
    # The broker URL is one of Kafka's advertised listeners, by its service name.
    advertised = {
        url.split("://", 1)[1] for url in kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    }
    assert worker.bootstrap_servers() in advertised
    assert worker.bootstrap_servers().split(":")[0] == "kafka"
    # Apache Kafka refuses a session timeout below group.min.session.timeout.ms (6 s).
    assert worker.session_timeout_ms >= 6_000
    # Reachable from other containers, on the port Prometheus discovers through DNS.
    assert worker.web_host == "0.0.0.0"
    prometheus = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    (dns,) = prometheus["scrape_configs"][0]["dns_sd_configs"]
    assert dns["names"] == ["worker"] and dns["port"] == worker.web_port
    # Scaling: no fixed host port per replica (a range, or none).
    for port in services["worker"].get("ports", []):
        host = str(port).rsplit(":", 1)[0]
        assert "-" in host, f"a fixed host port breaks --scale: {port}"
    # The producer runs the image the worker builds, with the same broker settings.
    assert services["producer"]["image"] == services["worker"]["image"]
    producer = Settings.from_env(
        {k: v for k, v in environment(services["producer"]).items() if k.startswith("SHOPSCORE_")}
    )
    assert producer.broker == worker.broker and producer.partitions == worker.partitions


def test_topic_creation_matches_the_workers_partitions(compose: dict[str, Any]) -> None:
    services = compose["services"]
    init = services["kafka-init"]
    script = interpolate("\n".join(init["command"]))
    for topic in ALL_TOPICS:
        assert re.search(rf"(^|\s){re.escape(topic)}(\s|;|$)", script), topic
    partitions = Settings.from_env(environment(services["worker"])).partitions
    assert f"--partitions {partitions} " in script
    assert environment(services["kafka"])["KAFKA_NUM_PARTITIONS"] == str(partitions)
    assert init["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert services["worker"]["depends_on"]["kafka-init"]["condition"] == (
        "service_completed_successfully"
    )


def test_everything_mounted_or_built_exists(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for host, _target in bind_mounts(service):
            assert host.exists(), f"service {name} mounts {host}, which does not exist"
        build = service.get("build")
        if build is not None:
            context = REPO / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = (
                "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            )
            assert (context / dockerfile).is_file(), name


def _host_path(service: dict[str, Any], container_path: str) -> Path:
    """Where a path inside the container comes from on the host, through its bind mounts."""
    for host, target in sorted(bind_mounts(service), key=lambda m: -len(m[1])):
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            return host / container_path[len(target) :].lstrip("/")
    raise AssertionError(f"{container_path} is not mounted from the host")


def test_prometheus_and_grafana_get_their_provisioned_files(compose: dict[str, Any]) -> None:
    prometheus = compose["services"]["prometheus"]
    config = next(
        a.split("=", 1)[1] for a in prometheus["command"] if a.startswith("--config.file=")
    )
    assert _host_path(prometheus, config) == REPO / "deploy" / "prometheus" / "prometheus.yml"

    grafana = compose["services"]["grafana"]
    assert grafana["image"].startswith("grafana/grafana-oss:")
    provisioning = _host_path(grafana, "/etc/grafana/provisioning")
    assert provisioning == REPO / "deploy" / "grafana" / "provisioning"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "shopscore.yml").read_text())[
        "providers"
    ]
    dashboards = _host_path(grafana, provider["options"]["path"])
    assert (dashboards / "shopscore.json").is_file()
    home = environment(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert _host_path(grafana, home).is_file()
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert datasource["url"] == "http://prometheus:9090"  # the compose service and its port
    assert any(str(p).endswith(":9090") for p in prometheus["ports"])


def test_the_image_installs_the_runtime_only() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    for source in re.findall(r"^COPY\s+(\S+)\s", dockerfile, flags=re.MULTILINE):
        assert (REPO / source).exists(), source
    install = re.search(r"pip install ([^\n&]+)", dockerfile)
    assert install and "train" not in install.group(1) and "dev" not in install.group(1)
    instructions = [line for line in dockerfile.splitlines() if not line.startswith("#")]
    assert "tensorflow" not in "\n".join(instructions).lower()
    assert re.search(r"HEALTHCHECK.*\n?.*/health", dockerfile)
    assert 'ENTRYPOINT ["shopscore"]' in dockerfile and 'CMD ["worker"]' in dockerfile
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git", ".venv"} <= set(ignored)


def test_the_tests_apache_kafka_runs_compose_s_version_and_server_settings(
    compose: dict[str, Any],
) -> None:
    """The suite's Apache Kafka (``stream.tools.apache_kafka``) is what compose deploys: the
    same version and every ``KAFKA_*`` server setting, listeners and log dirs aside."""
    from stream.tools.apache_kafka import CLUSTER_ID, KAFKA_VERSION, SERVER_SETTINGS

    kafka = compose["services"]["kafka"]
    assert kafka["image"] == f"apache/kafka:{KAFKA_VERSION}"
    env = environment(kafka)
    own = {"LISTENERS", "ADVERTISED_LISTENERS", "LISTENER_SECURITY_PROTOCOL_MAP", "LOG_DIRS"}
    own.add("CONTROLLER_QUORUM_VOTERS")
    deployed = {
        key.removeprefix("KAFKA_").lower().replace("_", "."): value
        for key, value in env.items()
        if key.startswith("KAFKA_") and key.removeprefix("KAFKA_") not in own
    }
    assert deployed == SERVER_SETTINGS
    assert env["CLUSTER_ID"] == CLUSTER_ID
