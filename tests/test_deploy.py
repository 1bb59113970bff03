"""The multi-replica deployment (deploy/, docs/deployment.md) agrees with what the server and repository expect."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from spade_deploy.serve.server import DEFAULT_PORTS

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
    assert {port["targetPort"] for port in service["spec"]["ports"]} == set(ports)


def test_image_and_manifest_serve_the_same_repository() -> None:
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    [command] = re.findall(r'^CMD (\[.*\])$', dockerfile, re.MULTILINE)
    deployment, _ = yaml.safe_load_all((ROOT / "deploy" / "kubernetes.yaml").read_text())
    assert yaml.safe_load(command) == deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "COPY repository /models" in dockerfile and "--model-repository=/models" in command
    assert "docs/deployment.md" in (ROOT / "README.md").read_text()
