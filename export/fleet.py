"""Kubernetes manifests for a fleet: ``python -m export fleet --out stepaudio.yaml [--replicas N] ...``.

One pod = one Triton server (``docker/Dockerfile.triton``: renders the model repository from the mounted
checkpoints with the deployment config's preset and ``--set`` overrides, then serves) + one real-time
controller (``docker/Dockerfile.controller``, torch-free) talking to it over the pod's loopback. Pods are
replicated; a Service spreads Realtime WebSocket sessions over their controllers.

Why the controller sits in Triton's pod instead of a separate Deployment behind a Triton Service: a
session's streams are stateful inside one server (a tokenizer sequence and every token2wav sequence live in
the instance that the sequence batcher routed them to), and a gRPC channel to a multi-pod Service pins to
whichever pod it first reached, so a restart of that connection would strand the state. Over loopback a
session's streams can only reach their own server. Scaling is by pods; each pod's GPUs are the deployment's
largest tensor-parallel size unless given.

Probes: Triton's ``/v2/health/ready`` (startup and readiness; loading the 130B chat model takes minutes)
and ``/v2/health/live``; the controller's ``/healthz`` (503 until its Triton has every required model:
readiness) and a TCP check (liveness, so a Triton restart does not restart the controller too).

Stopping a pod: the controller gets SIGTERM after a short lead and drains (``--drain-s``: no new sessions,
the open ones get that long to end); Triton's SIGTERM is held back by a preStop wait until the drain is over.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from export.deploy_config import ConfigError, DeploymentConfig, load_config

TRITON_HTTP_PORT, TRITON_GRPC_PORT, TRITON_METRICS_PORT = 8000, 8001, 8002
TRITON_PORTS = (TRITON_HTTP_PORT, TRITON_GRPC_PORT, TRITON_METRICS_PORT)
CHECKPOINTS_MOUNT = "/checkpoints"  # docker/Dockerfile.triton's CHECKPOINTS
REPOSITORY_DIR = "/opt/stepaudio/build/model_repository"  # where that image renders the repository
SERVICE_TYPES = ("ClusterIP", "LoadBalancer", "NodePort")
PRESTOP_LEAD_S = 5  # the controller's SIGTERM waits this long: endpoints drop a terminating pod asynchronously
TRITON_STOP_S = 30  # time left for tritonserver to unload after the drain


@dataclass(frozen=True)
class FleetConfig:
    name: str = "stepaudio"
    namespace: str | None = None
    replicas: int = 2
    triton_image: str = "stepaudio-triton:latest"
    controller_image: str = "stepaudio-controller:latest"
    preset: str = "gpu"
    overrides: tuple[str, ...] = ()  # deployment-config overrides (section.field=value), checked here
    gpus_per_pod: int | None = None  # None: the deployment's largest tensor_parallel_size
    checkpoints_claim: str = "stepaudio-checkpoints"  # a PersistentVolumeClaim holding the official checkpoints
    api_keys_secret: str = "stepaudio-api-keys"  # a Secret whose key ``keys`` holds comma-separated Bearer keys
    controller_port: int = 8765
    service_port: int = 80
    service_type: str = "ClusterIP"
    max_sessions_per_pod: int = 64
    startup_timeout_s: int = 1800  # rendering + loading every model, 130B chat model included
    shm_gib: int = 16  # /dev/shm for the Python backend's tensors between tritonserver and the stubs
    # A stopping pod (rolling update, scale-in): the controller refuses new sessions and gives the open ones
    # drain_s to end (then closes them: 1001 going away); Triton's SIGTERM waits until that is over.
    drain_s: int = 45
    termination_grace_s: int = 90  # drain_s, its 5 s lead, and Triton's own stop
    triton_cpu: str = "16"
    triton_memory: str = "128Gi"
    controller_cpu: str = "2"
    controller_memory: str = "2Gi"
    # Autoscaling (a HorizontalPodAutoscaler) when max_replicas is set: on the controllers' open sessions,
    # which the cluster's metrics adapter must serve as the custom pod metric ``controller_sessions_active``.
    max_replicas: int | None = None
    target_sessions_per_pod: int | None = None  # None: 3/4 of max_sessions_per_pod
    controller_args: tuple[str, ...] = ()  # more `python -m controller serve` options

    def check(self) -> DeploymentConfig:
        """The deployment config these manifests serve (preset + overrides), after checking every field."""
        for key in ("name", "namespace"):  # DNS labels; the Services add "-realtime" / "-triton" to the name
            value = getattr(self, key)
            if value is not None and not re.fullmatch(r"[a-z]([-a-z0-9]{0,48}[a-z0-9])?", value):
                raise ConfigError(f"{key}={value!r}: 1-50 lower-case letters, digits and '-', from a letter to a "
                                  "letter or digit")
        for key in ("replicas", "max_sessions_per_pod", "startup_timeout_s", "shm_gib", "termination_grace_s",
                    "drain_s"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        if not 1 <= self.service_port <= 65535:
            raise ConfigError(f"service_port={self.service_port}: a port in 1..65535")
        if not 1 <= self.controller_port <= 65535 or self.controller_port in TRITON_PORTS:
            raise ConfigError(f"controller_port={self.controller_port}: a port in 1..65535 other than Triton's "
                              "8000-8002 (the two containers share the pod's network)")
        if self.termination_grace_s < self.drain_s + PRESTOP_LEAD_S + TRITON_STOP_S:
            raise ConfigError(f"termination_grace_s={self.termination_grace_s}: at least drain_s + "
                              f"{PRESTOP_LEAD_S + TRITON_STOP_S} ({self.drain_s + PRESTOP_LEAD_S + TRITON_STOP_S}), "
                              "or Kubernetes kills the pod mid-drain")
        if self.max_replicas is not None and self.max_replicas < self.replicas:
            raise ConfigError(f"max_replicas={self.max_replicas}: at least replicas ({self.replicas})")
        target = self.target_sessions_per_pod
        if target is not None and not 1 <= target <= self.max_sessions_per_pod:
            raise ConfigError(f"target_sessions_per_pod={target}: in 1..max_sessions_per_pod ({self.max_sessions_per_pod})")
        if self.service_type not in SERVICE_TYPES:
            raise ConfigError(f"service_type={self.service_type!r}: {' | '.join(SERVICE_TYPES)}")
        deploy = load_config(self.preset, CHECKPOINTS_MOUNT, list(self.overrides))
        need = max(deploy.chat_llm.tensor_parallel_size, deploy.tts_lm.tensor_parallel_size)
        if self.gpus_per_pod is not None and self.gpus_per_pod < need:
            raise ConfigError(f"gpus_per_pod={self.gpus_per_pod}: the deployment's tensor parallelism needs {need}")
        return deploy

    def gpus(self, deploy: DeploymentConfig) -> int:
        """GPUs per pod: ``gpus_per_pod``, else the largest tensor-parallel size where any model runs on CUDA."""
        uses_cuda = any(getattr(getattr(deploy, name), "device", "cpu") == "cuda" for name in _SECTIONS)
        tp = max(deploy.chat_llm.tensor_parallel_size, deploy.tts_lm.tensor_parallel_size)
        return self.gpus_per_pod if self.gpus_per_pod is not None else (tp if uses_cuda else 0)


_SECTIONS = ("audio_tokenizer", "audio_tokenizer_stream", "chat_llm", "tts_lm", "tts", "speaker_embedding",
             "token2wav", "asr")


def _meta(cfg: FleetConfig, name: str, component: str | None = None) -> dict[str, Any]:
    labels = {"app.kubernetes.io/name": cfg.name, "app.kubernetes.io/part-of": "stepaudio-serve"}
    if component:
        labels["app.kubernetes.io/component"] = component
    meta: dict[str, Any] = {"name": name, "labels": labels}
    if cfg.namespace:
        meta["namespace"] = cfg.namespace
    return meta


def _selector(cfg: FleetConfig) -> dict[str, str]:
    return {"app.kubernetes.io/name": cfg.name, "app.kubernetes.io/component": "server"}


def _http_probe(path: str, port: str, period_s: int, failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": port}, "periodSeconds": period_s, "failureThreshold": failures,
            "timeoutSeconds": 5}


def _startup_checks(cfg: FleetConfig, period_s: int) -> int:
    return -(-cfg.startup_timeout_s // period_s)  # ceil: checks that cover the startup timeout


def _triton_container(cfg: FleetConfig, gpus: int) -> dict[str, Any]:
    args = ["python3", "-m", "export", "serve", "--preset", cfg.preset, "--out", REPOSITORY_DIR]
    for item in cfg.overrides:
        args += ["--set", item]
    resources: dict[str, Any] = {"requests": {"cpu": cfg.triton_cpu, "memory": cfg.triton_memory}}
    if gpus:
        resources["limits"] = {"nvidia.com/gpu": gpus}
    period_s = 10
    return {
        "name": "triton",
        "image": cfg.triton_image,
        "args": args,  # after the NGC image's entrypoint (it sets up the CUDA environment)
        "env": [
            {"name": "CHECKPOINTS", "value": CHECKPOINTS_MOUNT},
            {"name": "TRITON_BIND_ADDRESS", "value": "0.0.0.0"},
            {"name": "TRITON_START_TIMEOUT_S", "value": str(cfg.startup_timeout_s)},
            {"name": "CONTROLLER_PORT", "value": "off"},  # the controller has its own container
        ],
        "ports": [{"name": "triton-http", "containerPort": TRITON_HTTP_PORT},
                  {"name": "triton-grpc", "containerPort": TRITON_GRPC_PORT},
                  {"name": "triton-metrics", "containerPort": TRITON_METRICS_PORT}],
        "resources": resources,
        "startupProbe": _http_probe("/v2/health/ready", "triton-http", period_s, _startup_checks(cfg, period_s)),
        "readinessProbe": _http_probe("/v2/health/ready", "triton-http", period_s, 3),
        "livenessProbe": _http_probe("/v2/health/live", "triton-http", period_s, 6),
        "volumeMounts": [{"name": "checkpoints", "mountPath": CHECKPOINTS_MOUNT, "readOnly": True},
                         {"name": "dshm", "mountPath": "/dev/shm"}],
        # Every container of a stopping pod is told at once: Triton waits out the controller's drain, whose
        # conversations still need it.
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(cfg.drain_s + PRESTOP_LEAD_S)]}}},
    }


def _controller_container(cfg: FleetConfig) -> dict[str, Any]:
    args = ["python", "-m", "controller", "serve", "--triton", f"127.0.0.1:{TRITON_GRPC_PORT}", "--host", "0.0.0.0",
            "--port", str(cfg.controller_port), "--max-sessions", str(cfg.max_sessions_per_pod),
            "--triton-wait-s", str(cfg.startup_timeout_s), "--drain-s", str(cfg.drain_s), *cfg.controller_args]
    return {
        "name": "controller",
        "image": cfg.controller_image,
        "args": args,
        "env": [{"name": "CONTROLLER_API_KEYS",
                 "valueFrom": {"secretKeyRef": {"name": cfg.api_keys_secret, "key": "keys"}}}],
        "ports": [{"name": "realtime", "containerPort": cfg.controller_port}],
        "resources": {"requests": {"cpu": cfg.controller_cpu, "memory": cfg.controller_memory}},
        # its image runs as an unprivileged user and writes no files (logs go to stdout)
        "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False,
                            "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}},
        # The controller opens its port only once its Triton answers (models loaded): until then the startup
        # probe holds the liveness probe back, for as long as Triton may take.
        "startupProbe": {"tcpSocket": {"port": "realtime"}, "periodSeconds": 10,
                         "failureThreshold": _startup_checks(cfg, 10) + 3},
        "readinessProbe": _http_probe("/healthz", "realtime", 5, 2),
        "livenessProbe": {"tcpSocket": {"port": "realtime"}, "periodSeconds": 10, "failureThreshold": 3},
        # Endpoints drop a terminating pod asynchronously: a short wait before SIGTERM starts the drain.
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(PRESTOP_LEAD_S)]}}},
    }


def render(cfg: FleetConfig) -> list[dict[str, Any]]:
    """The manifests, in apply order: Deployment, the Realtime Service, the Triton Service, a PodDisruptionBudget
    and, with ``max_replicas``, a HorizontalPodAutoscaler."""
    deploy = cfg.check()
    gpus = cfg.gpus(deploy)
    selector = _selector(cfg)
    pod_meta = {"labels": {**_meta(cfg, cfg.name, "server")["labels"]},
                "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": str(TRITON_METRICS_PORT)}}
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(cfg, cfg.name, "server"),
        "spec": {
            "replicas": cfg.replicas,
            "selector": {"matchLabels": selector},
            # one pod at a time: each holds GPUs and live conversations
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}},
            "template": {
                "metadata": pod_meta,
                "spec": {
                    "terminationGracePeriodSeconds": cfg.termination_grace_s,
                    "containers": [_triton_container(cfg, gpus), _controller_container(cfg)],
                    "volumes": [
                        {"name": "checkpoints",
                         "persistentVolumeClaim": {"claimName": cfg.checkpoints_claim, "readOnly": True}},
                        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{cfg.shm_gib}Gi"}},
                    ],
                },
            },
        },
    }
    realtime = {
        "apiVersion": "v1", "kind": "Service", "metadata": _meta(cfg, f"{cfg.name}-realtime", "realtime"),
        "spec": {"type": cfg.service_type, "selector": selector,
                 "ports": [{"name": "realtime", "port": cfg.service_port, "targetPort": "realtime"}]},
    }
    triton = {  # the stages for direct (non-conversational) clients; a gRPC channel stays on one pod
        "apiVersion": "v1", "kind": "Service", "metadata": _meta(cfg, f"{cfg.name}-triton", "triton"),
        "spec": {"type": "ClusterIP", "selector": selector,
                 "ports": [{"name": "triton-http", "port": TRITON_HTTP_PORT, "targetPort": "triton-http"},
                           {"name": "triton-grpc", "port": TRITON_GRPC_PORT, "targetPort": "triton-grpc"},
                           {"name": "triton-metrics", "port": TRITON_METRICS_PORT, "targetPort": "triton-metrics"}]},
    }
    pdb = {
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": _meta(cfg, cfg.name, "server"),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector}},
    }
    manifests = [deployment, realtime, triton, pdb]
    if cfg.max_replicas is not None:
        # the autoscaler owns the count (its minReplicas is --replicas): a replicas field here would reset
        # it at every `kubectl apply`
        del deployment["spec"]["replicas"]
        manifests.append(_autoscaler(cfg))
    return manifests


def _autoscaler(cfg: FleetConfig) -> dict[str, Any]:
    target = cfg.target_sessions_per_pod or max(1, cfg.max_sessions_per_pod * 3 // 4)
    return {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": _meta(cfg, cfg.name, "server"),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": cfg.name},
            "minReplicas": cfg.replicas, "maxReplicas": cfg.max_replicas,
            "metrics": [{"type": "Pods", "pods": {"metric": {"name": "controller_sessions_active"},
                                                  "target": {"type": "AverageValue", "averageValue": str(target)}}}],
            # Removing a pod ends the conversations still open after its drain: scale in slowly,
            # one pod per 5 minutes after 10 quiet minutes; scale out as fast as pods can load.
            "behavior": {
                "scaleDown": {"stabilizationWindowSeconds": 600,
                              "policies": [{"type": "Pods", "value": 1, "periodSeconds": 300}]},
                "scaleUp": {"stabilizationWindowSeconds": 0,
                            "policies": [{"type": "Pods", "value": 2, "periodSeconds": 60}]},
            },
        },
    }


def to_yaml(manifests: list[dict[str, Any]]) -> str:
    import yaml

    header = "# Rendered by `python -m export fleet`; do not edit the rendered copy.\n"
    return header + "---\n".join(yaml.safe_dump(m, sort_keys=False, width=110) for m in manifests)


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = FleetConfig()
    p.add_argument("--out", type=Path, required=True, help="the manifests (one multi-document YAML file)")
    p.add_argument("--name", default=d.name)
    p.add_argument("--namespace", default=None)
    p.add_argument("--replicas", type=int, default=d.replicas)
    p.add_argument("--triton-image", default=d.triton_image)
    p.add_argument("--controller-image", default=d.controller_image)
    p.add_argument("--preset", default=d.preset)
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="deployment-config override, passed to each pod's `export serve` (repeatable)")
    p.add_argument("--gpus-per-pod", type=int, default=None)
    p.add_argument("--checkpoints-claim", default=d.checkpoints_claim)
    p.add_argument("--api-keys-secret", default=d.api_keys_secret)
    p.add_argument("--service-type", default=d.service_type, choices=SERVICE_TYPES)
    p.add_argument("--max-sessions-per-pod", type=int, default=d.max_sessions_per_pod)
    p.add_argument("--startup-timeout-s", type=int, default=d.startup_timeout_s)
    p.add_argument("--drain-s", type=int, default=d.drain_s,
                   help="a stopping pod's time for its open conversations to end")
    p.add_argument("--termination-grace-s", type=int, default=d.termination_grace_s)
    p.add_argument("--max-replicas", type=int, default=None,
                   help="add an autoscaler between --replicas and this, on the controllers' open sessions")
    p.add_argument("--target-sessions-per-pod", type=int, default=None,
                   help="the autoscaler's target (default: 3/4 of --max-sessions-per-pod)")


def config_from_args(args: argparse.Namespace) -> FleetConfig:
    return FleetConfig(name=args.name, namespace=args.namespace, replicas=args.replicas,
                       triton_image=args.triton_image, controller_image=args.controller_image, preset=args.preset,
                       overrides=tuple(args.set), gpus_per_pod=args.gpus_per_pod,
                       checkpoints_claim=args.checkpoints_claim, api_keys_secret=args.api_keys_secret,
                       service_type=args.service_type, max_sessions_per_pod=args.max_sessions_per_pod,
                       startup_timeout_s=args.startup_timeout_s, drain_s=args.drain_s,
                       termination_grace_s=args.termination_grace_s, max_replicas=args.max_replicas,
                       target_sessions_per_pod=args.target_sessions_per_pod)


def write(cfg: FleetConfig, out: Path) -> Path:
    text = to_yaml(render(cfg))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return out
