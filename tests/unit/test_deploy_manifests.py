"""deploy/k8s validates offline against the Kubernetes JSON schemas
(kubernetes-validate ships them), and keeps the rollout rules DEPLOY.md
states: drain before stopping, no liveness kill during a compile."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

kubernetes_validate = pytest.importorskip("kubernetes_validate")

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
# The oldest release still widely run, and the newest the package knows.
VERSIONS = ["1.29.0", kubernetes_validate.utils.latest_version()]


def resources() -> list[dict]:
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        found += kubernetes_validate.utils.resources_from_file(str(path))
    return found


def by_kind(kind: str) -> dict:
    (resource,) = [r for r in resources() if r["kind"] == kind]
    return resource


@pytest.mark.parametrize("version", VERSIONS)
def test_manifests_validate_strictly(version):
    kinds = []
    for resource in resources():
        kubernetes_validate.validate(resource, version, strict=True)
        kinds.append(resource["kind"])
    assert {"Deployment", "Service"} <= set(kinds)


def test_validator_rejects_a_broken_deployment():
    broken = copy.deepcopy(by_kind("Deployment"))
    container = broken["spec"]["template"]["spec"]["containers"][0]
    container["startupProbe"]["failureThreshold"] = "ninety"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)
    unknown = copy.deepcopy(by_kind("Deployment"))
    container = unknown["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")  # a typo
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(unknown, VERSIONS[-1], strict=True)


def test_rollout_drains_before_stopping():
    spec = by_kind("Deployment")["spec"]
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    sleep = container["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep"
    env = {e["name"]: e["value"] for e in container["env"]}
    max_grace = int(env["MAX_SERVE_GRACEFUL_SHUTDOWN_TIMEOUT_S"])
    assert max_grace > 5  # MAX's default cuts a long stream
    # The pod's grace covers the preStop sleep, MAX's grace and its exit.
    assert pod["terminationGracePeriodSeconds"] >= int(sleep[1]) + max_grace + 10


def test_probes_use_health_and_startup_covers_a_compile():
    (container,) = by_kind("Deployment")["spec"]["template"]["spec"]["containers"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/health"
    startup = container["startupProbe"]
    # A cold compile took 192 s on 2 cores; allow several times that.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600
