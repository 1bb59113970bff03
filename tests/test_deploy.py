"""The multi-replica deployment (deploy/, docs/deployment.md) agrees with what the server and repository expect."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from spade_deploy.serve.server import ADMIN_HEADER, DEFAULT_PORTS, RESTRICTED_APIS

ROOT = Path(__file__).resolve().parents[1]


def test_kubernetes_replicas_probe_triton_and_expose_its_ports() -> None:
    deployment, service = yaml.safe_load_all((ROOT / "deploy" / "kubernetes.yaml").read_text())
    assert deployment["kind"] == "Deployment" and service["kind"] == "Service"
    assert deployment["spec"]["replicas"] >= 2
    pod = deployment["spec"]["template"]
    assert deployment["spec"]["selector"]["matchLabels"] == pod["metadata"]["labels"] == service["spec"]["selector"]
    [container] = pod["spec"]["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == DEFAULT_PORTS
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(DEFAULT_PORTS["metrics"])
    assert {port["targetPort"] for port in service["spec"]["ports"]} == {"http", "grpc"}  # metrics: in-cluster only


def test_image_and_manifest_serve_the_same_repository() -> None:
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    [command] = re.findall(r'^CMD (\[.*\])$', dockerfile, re.MULTILINE)
    deployment, _ = yaml.safe_load_all((ROOT / "deploy" / "kubernetes.yaml").read_text())
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    image_command = yaml.safe_load(command)
    assert container["args"][:len(image_command)] == image_command
    assert "COPY repository /models" in dockerfile and "--model-repository=/models" in command
    # spade_deploy needs Python >= 3.11 in the container (the python backend runs the pipeline model there): NGC's
    # Triton images ship 3.12 from release 24.12 on, 3.10 before.
    [release] = re.findall(r"^ARG TRITON_RELEASE=(\d\d)\.(\d\d)$", dockerfile, re.MULTILINE)
    assert tuple(map(int, release)) >= (24, 12)


def test_the_replicas_admin_apis_need_the_key_as_serve_requires_it() -> None:
    deployment, _ = yaml.safe_load_all((ROOT / "deploy" / "kubernetes.yaml").read_text())
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    restricted = f"{','.join(RESTRICTED_APIS)}:{ADMIN_HEADER}=$(ADMIN_KEY)"
    assert f"--http-restricted-api={restricted}" in container["args"]
    assert f"--grpc-restricted-protocol={restricted}" in container["args"]
    [variable] = container["env"]
    assert variable["name"] == "ADMIN_KEY" and "secretKeyRef" in variable["valueFrom"]
    assert "docs/deployment.md" in (ROOT / "README.md").read_text()
