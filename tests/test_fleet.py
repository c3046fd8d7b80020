"""The fleet manifests (`python -m export fleet`): valid Kubernetes objects (the API's own JSON schemas,
strict), wired together (ports, probes, selectors, GPUs, the controller's Triton), refusing bad settings,
and the committed example in step with the renderer."""

from __future__ import annotations

import urllib.error
import urllib.request

import kubernetes_validate
import pytest
import yaml

from export.deploy_config import ConfigError
from export.fleet import FleetConfig, render, to_yaml
from tests.conftest import ROOT

K8S_VERSIONS = ("1.27.0", "1.30.0")  # the oldest still common in managed clusters, and a recent one


def _by_kind(manifests):
    return {(m["kind"], m["metadata"]["name"]): m for m in manifests}


def _pod(manifests):
    (deployment,) = [m for m in manifests if m["kind"] == "Deployment"]
    return deployment["spec"]["template"]


def _containers(manifests):
    return {c["name"]: c for c in _pod(manifests)["spec"]["containers"]}


@pytest.mark.parametrize("cfg", [FleetConfig(), FleetConfig(preset="cpu", replicas=1, service_type="LoadBalancer",
                                                            namespace="voice"),
                                 FleetConfig(replicas=2, max_replicas=8)])
def test_manifests_pass_the_kubernetes_schemas(cfg):
    manifests = render(cfg)
    kinds = ["Deployment", "Service", "Service", "PodDisruptionBudget"]
    assert [m["kind"] for m in manifests] == kinds + (["HorizontalPodAutoscaler"] if cfg.max_replicas else [])
    for m in manifests:
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(m, version, strict=True)  # raises on any unknown or mistyped field


def test_the_schema_check_catches_a_bad_manifest():
    bad = render(FleetConfig())[0]
    bad["spec"]["template"]["spec"]["containers"][0]["startupProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="startupProbes"):
        kubernetes_validate.validate(bad, K8S_VERSIONS[-1], strict=True)


def test_pod_is_wired_together():
    manifests = render(FleetConfig(replicas=3, max_sessions_per_pod=32))
    pod = _pod(manifests)
    containers = _containers(manifests)
    ports = {p["name"]: p["containerPort"] for c in containers.values() for p in c["ports"]}
    for c in containers.values():  # every probe names a declared port
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            if probe in c:
                target = c[probe].get("httpGet") or c[probe].get("tcpSocket")
                assert target["port"] in ports, (c["name"], probe)
    ctl = containers["controller"]["args"]
    assert ctl[:4] == ["python", "-m", "controller", "serve"]
    assert ctl[ctl.index("--triton") + 1] == f"127.0.0.1:{ports['triton-grpc']}"  # its own pod's Triton
    assert int(ctl[ctl.index("--port") + 1]) == ports["realtime"]
    assert ctl[ctl.index("--max-sessions") + 1] == "32"
    triton = containers["triton"]
    assert {e["name"]: e.get("value") for e in triton["env"]}["CONTROLLER_PORT"] == "off"
    mounts = {m["name"] for c in containers.values() for m in c.get("volumeMounts", [])}
    assert mounts == {v["name"] for v in pod["spec"]["volumes"]}
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == 4  # the gpu preset's chat_llm spans 4 GPUs
    # the Services and the disruption budget select exactly the pods, and target declared ports
    labels = pod["metadata"]["labels"]
    for m in manifests[1:]:
        selector = m["spec"]["selector"]
        selector = selector.get("matchLabels", selector)
        assert selector.items() <= labels.items(), m["metadata"]["name"]
        for port in m["spec"].get("ports", []):
            assert port["targetPort"] in ports
    deployment = manifests[0]
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()


@pytest.mark.parametrize("startup_timeout_s", [1800, 95])
def test_no_liveness_check_before_the_models_can_have_loaded(startup_timeout_s):
    """Both containers wait for Triton's models (the controller opens its port only then): a liveness probe
    before that would restart them in the middle of loading. Each has a startup probe covering the timeout."""
    for c in _containers(render(FleetConfig(startup_timeout_s=startup_timeout_s))).values():
        assert "livenessProbe" in c
        startup = c["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= startup_timeout_s, c["name"]


def test_a_stopping_pod_drains_before_triton_stops():
    cfg = FleetConfig(drain_s=30, termination_grace_s=70)
    manifests = render(cfg)
    containers = _containers(manifests)
    ctl = containers["controller"]["args"]
    assert ctl[ctl.index("--drain-s") + 1] == "30"
    lead = int(containers["controller"]["lifecycle"]["preStop"]["exec"]["command"][-1])
    held = int(containers["triton"]["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert held >= lead + 30  # Triton's SIGTERM comes after the controller's lead and its whole drain
    assert _pod(manifests)["spec"]["terminationGracePeriodSeconds"] == 70 >= held


def test_gpus_follow_the_deployment_config():
    assert _containers(render(FleetConfig(overrides=("chat_llm.tensor_parallel_size=8",))))["triton"][
        "resources"]["limits"]["nvidia.com/gpu"] == 8
    assert "limits" not in _containers(render(FleetConfig(preset="cpu")))["triton"]["resources"]
    assert _containers(render(FleetConfig(gpus_per_pod=8)))["triton"]["resources"]["limits"]["nvidia.com/gpu"] == 8
    args = _containers(render(FleetConfig(overrides=("tts_lm.max_batch_size=32",))))["triton"]["args"]
    assert args[args.index("--set") + 1] == "tts_lm.max_batch_size=32"  # each pod renders with the overrides


def test_autoscaler_scales_the_deployment_on_open_sessions():
    deployment, *_, hpa = render(FleetConfig(replicas=2, max_replicas=6, max_sessions_per_pod=40))
    spec = hpa["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                      "name": deployment["metadata"]["name"]}
    assert (spec["minReplicas"], spec["maxReplicas"]) == (2, 6)
    (metric,) = spec["metrics"]
    assert metric["pods"]["metric"]["name"] == "controller_sessions_active"  # the controller's own gauge
    assert metric["pods"]["target"]["averageValue"] == "30"  # 3/4 of 40
    assert spec["behavior"]["scaleDown"]["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 300}]
    target = render(FleetConfig(max_replicas=4, target_sessions_per_pod=10))[-1]["spec"]["metrics"][0]
    assert target["pods"]["target"]["averageValue"] == "10"
    assert all(m["kind"] != "HorizontalPodAutoscaler" for m in render(FleetConfig()))
    assert "replicas" not in deployment["spec"]  # the autoscaler owns the count; `kubectl apply` keeps it


def test_autoscaled_metric_is_the_controllers():
    from controller.metrics import Metrics

    assert b"controller_sessions_active" in Metrics().render()


@pytest.mark.parametrize("kw, message", [
    ({"replicas": 0}, "replicas"),
    ({"gpus_per_pod": 2}, "tensor parallelism needs 4"),
    ({"overrides": ("chat_llm.nope=1",)}, "chat_llm.nope"),
    ({"preset": "tpu"}, "unknown preset"),
    ({"name": "Step_Audio"}, "name="),
    ({"name": "x" * 51}, "name="),
    ({"namespace": "voice-"}, "namespace="),
    ({"controller_port": 8001}, "controller_port"),
    ({"service_type": "Ingress"}, "service_type"),
    ({"service_port": 0}, "service_port"),
    ({"drain_s": 120}, "termination_grace_s=90"),
    ({"replicas": 3, "max_replicas": 2}, "max_replicas"),
    ({"max_replicas": 4, "target_sessions_per_pod": 65}, "target_sessions_per_pod"),
])
def test_bad_settings_are_refused_by_name(kw, message):
    with pytest.raises(ConfigError, match=message):
        render(FleetConfig(**kw))


def test_controller_serves_the_probed_path():
    from controller.config import ControllerConfig
    from controller.server import ControllerServer

    path = _containers(render(FleetConfig()))["controller"]["readinessProbe"]["httpGet"]["path"]
    app = ControllerServer(ControllerConfig(), backend=None, vad=None).app()
    assert path in {r.get_info().get("path") for r in app.router.resources()}


@pytest.mark.integration
def test_tritonserver_answers_the_probed_paths(tiny_server):
    triton = _containers(render(FleetConfig()))["triton"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        url = f"http://{tiny_server.http_url}{triton[probe]['httpGet']['path']}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                assert response.status == 200, url
        except urllib.error.HTTPError as exc:
            pytest.fail(f"{url}: HTTP {exc.code}")


def test_committed_example_is_the_default_render():
    committed = (ROOT / "docker" / "fleet.yaml").read_text()
    assert committed == to_yaml(render(FleetConfig())), "re-render: python -m export fleet --out docker/fleet.yaml"
    assert len(list(yaml.safe_load_all(committed))) == 4


def test_cli_writes_the_manifests(tmp_path, capsys):
    from export.__main__ import main

    out = tmp_path / "fleet.yaml"
    assert main(["fleet", "--out", str(out), "--replicas", "3", "--set", "chat_llm.tensor_parallel_size=2"]) == 0
    docs = list(yaml.safe_load_all(out.read_text()))
    assert docs[0]["spec"]["replicas"] == 3
    assert _containers(docs)["triton"]["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert "3 pod(s)" in capsys.readouterr().out
    assert main(["fleet", "--out", str(out), "--replicas", "0"]) == 2
    assert "replicas must be >= 1" in capsys.readouterr().err


def test_silero_hash_is_the_one_the_controller_checks():
    import importlib.util

    from controller.vad import SILERO_SHA256

    spec = importlib.util.spec_from_file_location("fetch_silero_vad", ROOT / "tools" / "fetch_silero_vad.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.SHA256 == SILERO_SHA256


def test_container_commands_are_valid_command_lines():
    """Each container's args parse with the real command line they invoke (an option renamed there fails here)."""
    from controller.__main__ import _parser as controller_parser
    from export.__main__ import parser as export_parser

    containers = _containers(render(FleetConfig(overrides=("tts_lm.max_batch_size=32",))))
    triton = containers["triton"]["args"]
    assert triton[:3] == ["python3", "-m", "export"]
    served = export_parser().parse_args(triton[3:])
    assert (served.command, served.preset, served.set) == ("serve", "gpu", ["tts_lm.max_batch_size=32"])
    ctl = controller_parser().parse_args(containers["controller"]["args"][3:])
    assert (ctl.command, ctl.host, ctl.triton_wait_s) == ("serve", "0.0.0.0", 1800.0)


def _dockerfile(name: str) -> list[str]:
    """The instructions of docker/<name>, continuation lines joined, comments dropped."""
    text = (ROOT / "docker" / name).read_text().replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


@pytest.mark.parametrize("name", ["Dockerfile.triton", "Dockerfile.controller"])
def test_dockerfiles_copy_what_exists_and_run_real_commands(name):
    import json
    import shlex

    from controller.__main__ import _parser as controller_parser
    from export.__main__ import parser as export_parser

    lines = _dockerfile(name)
    copies = [shlex.split(line)[1:-1] for line in lines if line.startswith("COPY ")]
    assert copies
    for sources in copies:
        for src in sources:
            assert (ROOT / src).exists(), f"{name}: COPY {src}: no such path"
    (cmd,) = [json.loads(line[len("CMD"):]) for line in lines if line.startswith("CMD ")]
    module = cmd[cmd.index("-m") + 1]
    parse = {"export": export_parser().parse_args, "controller": controller_parser().parse_args}[module]
    assert parse(cmd[cmd.index("-m") + 2:]).command == "serve"


def test_controller_image_stays_light():
    installs = [line for line in _dockerfile("Dockerfile.controller") if "pip install" in line]
    assert installs and all('".[controller]"' in line for line in installs)
    assert not any(extra in line for line in installs for extra in ("models", "serve]", "torch"))
    # the fleet runs it with runAsNonRoot, which the kubelet can only verify for a numeric user
    (user,) = [line.split()[1] for line in _dockerfile("Dockerfile.controller") if line.startswith("USER ")]
    assert user.isdigit() and int(user) > 0
    assert _containers(render(FleetConfig()))["controller"]["securityContext"]["runAsNonRoot"] is True
