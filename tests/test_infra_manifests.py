"""infra/ offline: every Kubernetes manifest validates (KubeRay resources against KubeRay's CRD
schemas, core objects with kubernetes-validate, the Serve config against Ray Serve's schema); a
broken value is reported naming the file, the resource and the field; the GPU training configs are
what DeepSpeed gets. (The images: tests/test_infra_images.py.)"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
INFRA = REPO / "infra"
MANIFESTS = sorted((INFRA / "k8s").glob("*.yaml"))


@pytest.fixture(scope="module")
def validator():
    spec = importlib.util.spec_from_file_location("validate_manifests", INFRA / "validate_manifests.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not all((module.crds_dir() / name).is_file() for name in module.CRD_FILES.values()):
        pytest.skip(f"KubeRay's CRDs are not in {module.crds_dir()} (a checkout beside ../shared/kuberay-crds, "
                    f"or ${module.CRDS_ENV})")
    return module


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_every_manifest_is_valid(validator):
    kinds = set()
    for path in MANIFESTS:
        assert validator.validate_file(path) == [], path.name
        kinds |= {d["kind"] for d in validator.documents(path)}
    assert {"RayJob", "RayService", "Deployment", "StatefulSet", "Service", "ConfigMap", "NetworkPolicy"} <= kinds


def test_a_value_that_breaks_the_crd_schema_is_named(validator, tmp_path):
    job = _docs(INFRA / "k8s" / "rayjob-pipeline.yaml")[0]
    group = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    group["replicas"] = "four"
    group["maxReplica"] = group.pop("maxReplicas")  # a misspelt key Kubernetes would silently drop
    path = tmp_path / "rayjob.yaml"
    path.write_text(yaml.safe_dump(job))
    found = validator.validate_file(path)
    assert f"{path}: RayJob grec-pipeline: spec.rayClusterSpec.workerGroupSpecs[0].replicas: 'four' is not of " \
           "type 'integer'" in found
    assert any("workerGroupSpecs[0]: Additional properties are not allowed ('maxReplica' was unexpected)" in line
               for line in found)


def test_a_broken_core_object_is_named(validator, tmp_path):
    mlflow = _docs(INFRA / "k8s" / "mlflow.yaml")
    deployment = next(d for d in mlflow if d["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "http"
    path = tmp_path / "mlflow.yaml"
    path.write_text(yaml.safe_dump(deployment))
    assert validator.validate_file(path) == [
        f"{path}: Deployment mlflow: spec.template.spec.containers[0].ports[0].containerPort: 'http' is not of "
        "type 'integer'"]


def test_a_serve_config_ray_rejects_is_named(validator, tmp_path):
    service = _docs(INFRA / "k8s" / "rayservice.yaml")[0]
    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    del config["applications"][0]["import_path"]
    service["spec"]["serveConfigV2"] = yaml.safe_dump(config)
    path = tmp_path / "rayservice.yaml"
    path.write_text(yaml.safe_dump(service))
    [problem] = validator.validate_file(path)
    assert problem.startswith(f"{path}: RayService grec-serve: spec.serveConfigV2: not a valid Serve config")
    assert "import_path" in problem


def test_serve_config_file_is_ray_serve_valid_and_the_rayservice_runs_it():
    from ray.serve.schema import ServeDeploySchema

    config = yaml.safe_load((INFRA / "serve" / "grec_serve.yaml").read_text())
    [app] = ServeDeploySchema.model_validate(config).applications
    assert app.import_path == "serving.builder:app"
    service = _docs(INFRA / "k8s" / "rayservice.yaml")[0]
    assert yaml.safe_load(service["spec"]["serveConfigV2"]) == config


def test_serve_config_args_are_a_valid_serving_config(monkeypatch):
    """The builder's args validate as they will on the cluster (the token from its variable)."""
    from serving.config import ServingConfig

    args = dict(yaml.safe_load((INFRA / "serve" / "grec_serve.yaml").read_text())["applications"][0]["args"])
    monkeypatch.setenv(args["token_env"], "secret-from-kubernetes")
    config = ServingConfig.load({k: v for k, v in args.items() if k != "token_env"}, token_env=args.pop("token_env"))
    assert config.api_token.get_secret_value() == "secret-from-kubernetes"
    assert config.online_store.startswith("redis://") and config.tracking_uri.startswith("http://")


def test_ray_clusters_use_token_auth_and_the_image_with_grec():
    for path in ("rayjob-pipeline.yaml", "rayjob-train-gpu.yaml", "rayservice.yaml"):
        spec = _docs(INFRA / "k8s" / path)[0]["spec"]
        cluster = spec.get("rayClusterSpec") or spec["rayClusterConfig"]
        assert cluster["authOptions"] == {"mode": "token"}, path
        groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
        images = {c["image"] for g in groups for c in g["template"]["spec"]["containers"]}
        assert images <= {"grec:cpu", "grec:cuda"}, path


@pytest.mark.parametrize(("name", "stage"), [("movielens_gpu_zero2_bf16", 2), ("movielens_gpu_zero3_bf16", 3)])
def test_gpu_configs_give_deepspeed_zero_in_bf16(name, stage):
    from jobs.train.config import load_config
    from jobs.train.engine import deepspeed_config

    config = load_config(INFRA / "configs" / f"{name}.yaml")
    assert config.scaling.use_gpu and config.scaling.storage_path.startswith("s3://")
    engine = deepspeed_config(config, world_size=2)
    assert engine["zero_optimization"]["stage"] == stage and engine["bf16"] == {"enabled": True}


def test_cluster_pipeline_config_names_shared_storage():
    from jobs.train.config import load_config

    config = load_config(INFRA / "configs" / "movielens_cluster.yaml")
    assert config.dataset.path.startswith("s3://") and config.scaling.storage_path.startswith("s3://")
    job = _docs(INFRA / "k8s" / "rayjob-pipeline.yaml")[0]
    assert "infra/configs/movielens_cluster.yaml" in job["spec"]["entrypoint"]


def _grec_steps(script: str) -> list[tuple[str, list[str]]]:
    """(subcommand, its --options) of each `grec` command line of a shell script, in order."""
    steps = []
    for line in script.splitlines():
        words = line.split()
        if words[:1] == ["grec"]:
            sub = " ".join(words[1:3]) if words[1] == "data" else words[1]
            steps.append((sub, sorted(w.strip("'\"") for w in words if w.startswith("--"))))
    return steps


def test_the_pipeline_rayjob_runs_the_main_jobs_steps():
    """The RayJob runs what scripts/main_job.sh runs, in its order, serving aside (the RayService
    serves): a champion promoted without `build-index` would be served without its retrieval index,
    and a dataset prepared with another split would be evaluated on another protocol."""
    main_job = _grec_steps((REPO / "scripts" / "main_job.sh").read_text())
    pipeline = _grec_steps(_docs(INFRA / "k8s" / "rayjob-pipeline.yaml")[0]["spec"]["entrypoint"])
    assert [sub for sub, _ in pipeline] == [sub for sub, _ in main_job if sub != "serve"]
    prepare = dict(main_job)["data prepare"]
    assert dict(pipeline)["data prepare"] == prepare and "--split" in prepare
    assert "--promote" in dict(pipeline)["evaluate"]
