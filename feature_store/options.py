"""What a user chooses when preparing a dataset: the source's options, the time split, the
out-of-vocabulary buckets. Plain dataclasses validated at construction, importable without pyarrow
(the `grec` command reads their defaults to build its help)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# The split names of a training set, in time order.
SPLITS = ("train", "validation", "test")
# Hashed ids per categorical feature for values unseen in training.
DEFAULT_OOV_BUCKETS = 8


@dataclass(frozen=True)
class SyntheticOptions:
    """The synthetic source's size and label structure (see sources/synthetic.py)."""

    num_events: int = 100_000
    num_users: int | None = None  # default: num_events // 50 (about 50 events per user)
    num_items: int = 10_000
    num_tasks: int = 2
    task_correlation: float = 0.5
    chunk_size: int = 500_000

    def __post_init__(self) -> None:
        if self.num_events < 1 or self.num_items < 1 or self.chunk_size < 1:
            raise ValueError("num_events, num_items and chunk_size must be >= 1")
        if self.num_users is not None and self.num_users < 1:
            raise ValueError(f"num_users must be >= 1, got {self.num_users}")
        if self.num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {self.num_tasks}")
        if not -1.0 <= self.task_correlation <= 1.0:
            raise ValueError(f"task_correlation must be in [-1, 1], got {self.task_correlation}")


@dataclass(frozen=True)
class SourceOptions:
    """Options of `get_source`. `data_dir`: read the original files from there; `download`: fetch
    the official archive into `data_dir` (or a cache) when the files are not there yet."""

    data_dir: Path | None = None
    download: bool = False
    max_events: int | None = None
    sequence_length: int = 50
    seed: int = 0
    synthetic: SyntheticOptions = field(default_factory=SyntheticOptions)

    def __post_init__(self) -> None:
        if self.max_events is not None and self.max_events < 1:
            raise ValueError(f"max_events must be >= 1, got {self.max_events}")
        if self.sequence_length < 1:
            raise ValueError(f"sequence_length must be >= 1, got {self.sequence_length}")


# How events are split into train / validation / test (RecBole's `eval_args` split, by time):
# - global_time: two time cut-offs over all events (the latest test_fraction of events is test);
# - user_time: each user's events by time, the last test_fraction (at least one) test, the
#   validation_fraction before them (at least one) validation, every user evaluated;
# - leave_one_out: each user's last event test, the one before it validation.
SPLIT_PROTOCOLS = ("global_time", "user_time", "leave_one_out")
# Default fractions (validation, test) per protocol.
DEFAULT_FRACTIONS = {"global_time": (0.1, 0.1), "user_time": (0.1, 0.2)}


@dataclass(frozen=True)
class SplitConfig:
    """Which protocol splits the events, its fractions (None: the protocol's default) and how events
    of one user at the same instant are ordered: `tie_seed` None keeps ingestion order (the source's
    row order), an integer shuffles tied events with that seed (leave-one-out on data whose users
    rate several items in the same second depends on it)."""

    protocol: str = "global_time"
    validation_fraction: float | None = None
    test_fraction: float | None = None
    tie_seed: int | None = None

    def __post_init__(self) -> None:
        if self.protocol not in SPLIT_PROTOCOLS:
            raise ValueError(f"split protocol {self.protocol!r} is unknown; expected one of {list(SPLIT_PROTOCOLS)}")
        if self.protocol == "leave_one_out":
            if self.validation_fraction is not None or self.test_fraction is not None:
                raise ValueError("leave_one_out takes each user's last event for test and the one before for "
                                 "validation: it has no fractions")
            return
        defaults = DEFAULT_FRACTIONS[self.protocol]
        for name, default in zip(("validation_fraction", "test_fraction"), defaults):
            value = getattr(self, name)
            if value is None:
                object.__setattr__(self, name, default)
            elif not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if self.validation_fraction + self.test_fraction >= 1.0:
            raise ValueError("validation_fraction + test_fraction must leave some events for training, got "
                             f"{self.validation_fraction} + {self.test_fraction}")

    @property
    def per_user(self) -> bool:
        """Each user's own events are split (user_time, leave_one_out), not the calendar."""
        return self.protocol != "global_time"

    def to_dict(self) -> dict[str, object]:
        return {"protocol": self.protocol, "validation_fraction": self.validation_fraction,
                "test_fraction": self.test_fraction, "tie_seed": self.tie_seed}
