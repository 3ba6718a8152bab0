"""The serving configuration: one typed object, validated once when it is loaded.

Every deployment of the application receives the same `ServingConfig`; nothing reads the
environment after load (the bearer token is resolved from its variable here), so a replica that
starts on another node behaves exactly like the driver asked.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from feature_store.online.location import default_online_store, parse_online_store
from registry.integrity import integrity_required

# `models:/NAME@alias` or `models:/NAME/VERSION`, the forms registry.models.load_registered takes.
_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(@(?P<alias>[A-Za-z0-9_\-]+)|/(?P<version>\d+))$")


class ServingConfigError(ValueError):
    """The serving configuration is invalid; the message names the field and what was expected."""


class ReplicaConfig(BaseModel):
    """How many copies of a deployment run, what each reserves from Ray, how many requests it
    takes in, and how Serve checks that it is alive."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    num_replicas: int = Field(1, ge=1)
    # Fractions let the deployments' replicas share a 2-core machine (Serve reserves 1 CPU by default).
    num_cpus: float = Field(0.25, gt=0)
    max_ongoing_requests: int = Field(64, ge=1, description="requests one replica works on at once")
    # Serve's admission control: requests waiting for a replica beyond this many (per caller) are
    # refused at once (503 with Retry-After) instead of queueing without bound; -1 = no limit.
    max_queued_requests: int = Field(64, ge=-1)
    # Serve's controller calls each replica this often and replaces one that fails or does not
    # answer in time; a killed replica is replaced within about one period.
    health_check_period_s: float = Field(1.0, gt=0)
    health_check_timeout_s: float = Field(10.0, gt=0)
    # A deployment that keeps the CPU busy (the scorer's forwards) at a lower priority than the
    # ingress and Serve's proxy lets those answer, and refuse, at once while it saturates the CPU.
    nice: int = Field(0, ge=0, le=19, description="added to each replica process's niceness (0-19): its CPU "
                                                  "priority below the deployments left at 0")


class BatchingConfig(BaseModel):
    """Dynamic batching of the scorer's forward (`@serve.batch`), across concurrent requests."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_batch_size: int = Field(16, ge=1)
    batch_wait_timeout_s: float = Field(0.005, ge=0)


class ServingConfig(BaseModel):
    """Everything `build_app` needs. Build it with `ServingConfig.load(...)` or the constructor."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_uri: str = Field(description="models:/NAME@alias (followed as it moves) or models:/NAME/VERSION")
    tracking_uri: str | None = Field(None, description="MLflow tracking/registry URI; None = MLflow's default")
    online_store: str = Field(
        default_factory=default_online_store,
        description="redis://HOST:PORT/DB, sqlite:///PATH or a file path; default .grec/online.sqlite under "
                    "the working directory (where `grec data materialize` writes by default)",
    )
    # When the online store stops answering (past the backend's retries): serve default features
    # and say so (`features_degraded: true`), or refuse with 503.
    on_store_unavailable: Literal["degrade", "reject"] = "degrade"
    # After a failed read, reads skip the store for this long (degrading or refusing at once)
    # instead of each paying the retries again.
    store_retry_interval_s: float = Field(1.0, gt=0)
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    # Guards every /v1 route when set; `None` leaves them open (health, readiness, metrics stay open).
    api_token: SecretStr | None = None
    max_candidates: int = Field(1000, ge=1, description="most candidates, or /v1/score rows, per request")
    max_k: int = Field(1000, ge=1)
    max_score_groups: int = Field(
        64, ge=1, description="most distinct (user, context) pairs in one /v1/score request (one store lookup each)")
    max_body_bytes: int = Field(1_000_000, ge=1024)
    # A client that sends its body slowly (or stops) is answered 408 past this, so it cannot hold a
    # connection and a replica's request slot for longer.
    body_timeout_s: float = Field(5.0, gt=0, description="how long a request's body may take to arrive (408 past it)")
    request_timeout_s: float = Field(10.0, gt=0, description="each request's deadline, which the scorer honours")
    # Admission at the door: an ingress replica works on at most this many /v1/recommend and
    # /v1/score requests at once (decided on arrival, before the body: a slow client holds its
    # slot for admission_body_grace_s at most) and answers the rest with 503 at once (less than
    # the scorer replicas and their queues hold, so those rarely have to refuse).
    max_in_flight: int = Field(48, ge=1, description="ranking requests one ingress replica admits at once")
    admission_body_grace_s: float = Field(
        1.0, gt=0, description="how long a ranking request keeps its admission slot while its body is still "
                               "arriving; past it the slot is given back until the body is there")
    retry_after_s: int = Field(1, ge=1, description="Retry-After of 503 answers (overloaded, unavailable)")
    # Whether a deployment is up is Serve's health checks' (health_check_timeout_s), never this.
    readiness_timeout_s: float = Field(2.0, gt=0, description="how long /readyz waits for the scorer's "
                                                              "check of the online store (past it: its last answer)")
    reload_interval_s: float = Field(30.0, gt=0, description="how often the registry alias is polled")
    require_integrity: bool = Field(
        default_factory=integrity_required, description="refuse a version (or recommendation stage) registered "
        "without a manifest of its files' sha256 instead of loading it unchecked with a warning; a version whose "
        "files do not match its manifest is refused either way; default: $GREC_REQUIRE_INTEGRITY, else false")
    # Candidates of a request that brings none: "index" asks the model version's recommendation stage
    # (`grec build-index`: co-visitation, the next-item model, recent popularity); "popularity" (and
    # a version without a stage) takes the items seen most often in training, ranked by the task.
    retrieval: Literal["index", "popularity"] = "index"
    retrieval_size: int | None = Field(None, ge=1, description="candidates each of the stage's sources adds for a "
                                                               "request that brings none (default: the stage's "
                                                               "own); with popularity, the candidates ranked")
    # An item's text (its title) is the same for every user: the scorer encodes the most frequent
    # items' texts when it loads a version, so the first requests do not wait for the text encoder.
    warm_item_texts: int = Field(10_000, ge=0, description="item texts of the most frequent training items encoded "
                                 "when a scorer replica loads a version, before it takes traffic (at most the "
                                 "model's text cache size); 0: each on first sight")
    blend: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="per task, a blend of /v1/recommend that replaces the one `grec build-index` fitted (name -> "
                    "weight, names as in a request's `blend`), e.g. {like: {like: 1.0, covisitation: 1.0}}")
    ingress: ReplicaConfig = Field(
        ReplicaConfig(max_ongoing_requests=512, max_queued_requests=256),
        description="the HTTP ingress; default 1 replica, max_ongoing_requests 512, max_queued_requests 256")
    # Two scorers: one replica's death leaves the other serving while Serve replaces it. Each works
    # on whole requests (store reads, candidates, rows, its batched forward): it takes in two
    # batches' worth, one being ranked while the next forms. The queues behind the door
    # (max_in_flight) hold more than it admits, so in steady state requests are shed at the door,
    # before any work; the queue limits catch what one slow replica backs up.
    scorer: ReplicaConfig = Field(
        ReplicaConfig(num_replicas=2, max_ongoing_requests=32, max_queued_requests=32, nice=5),
        description="the scorer (online features, candidates, ranking of a whole request); default 2 replicas, "
                    "max_ongoing_requests 32, max_queued_requests 32, nice 5")
    batching: BatchingConfig = BatchingConfig()
    # Off by default: in this mode Ray Serve binds HAProxy's stats and Prometheus listeners to every
    # interface without auth, and offers no way to bind them to loopback (grec is closed by default).
    throughput_optimized: bool = Field(
        False, description="`grec serve` on a local Ray: Ray Serve's throughput-optimized mode (HAProxy as the HTTP "
        "ingress, direct ingress, gRPC between replicas), 1.25-1.75x the requests/s of the default "
        "(docs/benchmarks/serve_modes.md); HAProxy's stats and metrics ports then listen on all interfaces. "
        "A joined cluster runs the mode its nodes were started with (infra/k8s/rayservice.yaml turns it on)")

    @field_validator("model_uri")
    @classmethod
    def _check_model_uri(cls, value: str) -> str:
        if not _MODEL_URI.match(value):
            raise ValueError(f"{value!r} is not a registry URI; expected models:/NAME@ALIAS or models:/NAME/VERSION")
        return value

    @field_validator("online_store")
    @classmethod
    def _check_online_store(cls, value: str) -> str:
        kind, location = parse_online_store(value)  # the same forms as `grec data materialize`
        # Replicas do not run in the caller's working directory: a file path is made absolute here.
        return location if kind == "redis" else str(Path(location).resolve())

    @model_validator(mode="before")
    @classmethod
    def _merged_deployments(cls, values: Any) -> Any:
        # A config written for the endpoint's former deployments names what replaced them.
        if isinstance(values, dict):
            for old in ("features", "ranker"):
                if old in values:
                    raise ValueError(f"{old!r}: the feature lookup and the ranker are one deployment now; "
                                     f"set its replicas under 'scorer'")
        return values

    @model_validator(mode="after")
    def _check_batching_fits(self) -> ServingConfig:
        # A batch can only be as large as the requests a replica lets in at once.
        if self.scorer.max_ongoing_requests < self.batching.max_batch_size:
            raise ValueError(
                f"scorer.max_ongoing_requests ({self.scorer.max_ongoing_requests}) must be >= "
                f"batching.max_batch_size ({self.batching.max_batch_size}), or batches never fill"
            )
        return self

    @property
    def model_name(self) -> str:
        return _MODEL_URI.match(self.model_uri)["name"]  # type: ignore[index]

    @property
    def model_alias(self) -> str | None:
        return _MODEL_URI.match(self.model_uri)["alias"]  # type: ignore[index]

    @classmethod
    def load(cls, values: dict[str, Any] | None = None, *, file: str | Path | None = None,
             token_env: str | None = None) -> ServingConfig:
        """Validates `values` (merged over a JSON/YAML `file`), reading the token from `token_env`.

        Raises ServingConfigError listing every invalid field with what was expected.
        """
        merged: dict[str, Any] = {}
        if file is not None:
            merged.update(_read_config_file(Path(file)))
        merged.update({key: value for key, value in (values or {}).items() if value is not None})
        if token_env and "api_token" not in merged:
            token = os.environ.get(token_env)
            if token:
                merged["api_token"] = token
        try:
            return cls.model_validate(merged)
        except ValidationError as err:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in error['loc']) or 'config'}: {error['msg']}"
                for error in err.errors()
            )
            raise ServingConfigError(f"invalid serving config: {problems}") from None


def _read_config_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ServingConfigError(f"serving config file {path} does not exist")
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml  # only needed for YAML files

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ServingConfigError(f"serving config file {path}: expected a mapping, got {type(data).__name__}")
    return data
