"""Every tunable of the service, from environment variables prefixed RBC_ (see docs/service.md)."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from core.classify.tta import TTA_VIEWS
from core.imageio import (
    DEFAULT_FORMATS,
    DEFAULT_MAX_ASPECT_RATIO,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    MIB,
)
from records.store import default_url

# A label that can name a folder of crops (training.datasets.slides imports by folder).
EXTRA_LABEL = re.compile(r"\w(?:[\w.+ -]{0,98}[\w+-])?")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RBC_", frozen=True, protected_namespaces=())

    model_dir: Path = Path("models/default")
    # Model versions (app/versions.py, docs/service.md "Model versions"): a folder whose
    # subfolders are model folders (e.g. `python -m training adapt --out` outputs), listed by
    # GET /models and switched by POST /models/{id}/activate; RBC_MODEL_DIR is always the
    # version "default". Unset: only RBC_MODEL_DIR is listed, and switching is refused (409).
    models_dir: Path | None = None
    # How often an instance checks the records database for another instance's activation.
    models_poll_s: float = Field(default=10.0, gt=0.0)
    # "Teach the model" jobs (app/teaching.py, docs/service.md "Teach the model"): POST
    # /models/teach queues a `python -m training adapt` run into a new folder of RBC_MODELS_DIR,
    # which a background runner in each instance takes, one job at a time per database. Off:
    # requests are refused (409) and this instance runs no jobs.
    teach_enabled: bool = True
    # The model the jobs adapt: unset, RBC_MODEL_DIR (the version "default"). It must carry a
    # replay set (`python -m training add-replay`), as the shipped model does.
    teach_base_dir: Path | None = None
    # How often an idle runner looks for a queued job, and a running one writes its heartbeat.
    teach_poll_s: float = Field(default=5.0, gt=0.0)
    # A running job whose heartbeat is older than this (its instance died) is taken back by any
    # runner: queued again once, failed after a second interruption. At least 3 x teach_poll_s.
    teach_stale_s: float = Field(default=120.0, gt=0.0)
    # A run of adapt that takes longer than this is stopped and its job fails (a hung child must
    # not hold the queue); adapt's own target is 900 s for 5,000 reviewed cells on 2 cores.
    teach_timeout_s: float = Field(default=3600.0, gt=0.0)
    # The cell detector for whole fields (core/detect/learned.py); when this folder does not
    # exist the classical segmentation (core/detect/classical.py) finds the red cells instead.
    # "none" forces that.
    detector_dir: Path = Path("models/detector")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Intra-op threads for torch and ONNX Runtime; 0 keeps their default (one per core).
    torch_threads: int = Field(default=0, ge=0)
    # What classifies (core/classify/engines.py): ONNX Runtime where the model has model.onnx
    # and runs on the CPU ("auto"), or always "onnx" (refused where it cannot), or "torch".
    engine: Literal["auto", "onnx", "torch"] = "auto"
    # Cells per forward pass; larger batches are split. 8 keeps a smear's peak memory ~100 MiB
    # lower than 32 at the same speed (bench/bench_service_memory.py, docs/service.md).
    inference_batch_size: int = Field(default=8, ge=1)
    # Test-time views averaged per cell (core/classify/tta.py): unset takes the model card's;
    # 1 is fastest.
    tta_views: int | None = None
    max_upload_bytes: int = Field(default=DEFAULT_MAX_BYTES, ge=1, description="per image")
    max_request_bytes: int = Field(default=64 * MIB, ge=1, description="whole request body")
    max_pixels: int = Field(
        default=DEFAULT_MAX_PIXELS, ge=1, description="width x height of one image"
    )
    max_files: int = Field(default=256, ge=1, description="images per batch request")
    # A cell image or field longer than this many times its width is refused from its header
    # (a 20000x1 strip is no picture of a cell, and squaring it costs gigabytes).
    max_aspect_ratio: float = Field(default=DEFAULT_MAX_ASPECT_RATIO, ge=1.0)
    # Whole fields, at the training scale: what one request may ask of a 2-core, 512 MiB
    # instance. A 1920x1080 field fits (~8 s, +135 MiB on 2 cores); 2048x2048 cost +406 MiB
    # (bench/bench_smear_budget.py; docs/service.md, "Bounded cost per request").
    max_smear_pixels: int = Field(default=2_100_000, ge=1)
    max_smear_cells: int = Field(default=1000, ge=1)
    # Heavy requests (smears, batches of more than heavy_batch_files images) run at most
    # heavy_concurrency at a time; the others wait up to heavy_wait_s, then get 503.
    heavy_concurrency: int = Field(default=1, ge=1)
    heavy_wait_s: float = Field(default=15.0, ge=0.0)
    heavy_batch_files: int = Field(default=16, ge=1)
    # Slow clients: headers must arrive within header_timeout_s of the connection (or of the
    # previous answer), the body within body_timeout_s of the headers; idle keep-alive
    # connections close after keep_alive_s; beyond max_connections the oldest connection that
    # has no request in progress is closed to make room.
    header_timeout_s: float = Field(default=10.0, gt=0.0)
    body_timeout_s: float = Field(default=50.0, gt=0.0)
    keep_alive_s: int = Field(default=5, ge=1)
    max_connections: int = Field(default=1000, ge=1)
    accepted_formats: Annotated[tuple[str, ...], NoDecode] = DEFAULT_FORMATS
    # A prediction whose top probability is below this is marked needs_review. Unset: the
    # model's own threshold (calibration.json, chosen on validation for a stated accuracy), or
    # 0.7 for a model without calibration.
    review_threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    # When set, the API asks for `Authorization: Bearer <token>`; the page asks for it once.
    api_token: SecretStr | None = None
    # Origins allowed to call the API from a browser page elsewhere; none by default, never "*".
    cors_origins: Annotated[tuple[str, ...], NoDecode] = ()
    # Labels reviewers may give beyond the served model's classes: the laboratory's own classes
    # (e.g. "sickle_cell"), which `python -m training adapt` turns into classes of its model once
    # enough cells carry them. Each a word, with dots, plus, minus or inner spaces.
    extra_labels: Annotated[tuple[str, ...], NoDecode] = ()
    # The laboratory's records (slides, reviews, users; records/, docs/slides.md). data_dir holds
    # the embedded SQLite database when database_url is unset; database_url selects another
    # (PostgreSQL for several instances), or "none" to turn the slides API off.
    data_dir: Path = Path("data")
    database_url: SecretStr | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"

    @field_validator("accepted_formats", "cors_origins", "extra_labels", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("accepted_formats")
    @classmethod
    def _upper(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one image format must be accepted")
        return tuple(v.upper() for v in value)

    @field_validator("tta_views")
    @classmethod
    def _known_views(cls, value: int | None) -> int | None:
        # An int field, so that "4" from the environment parses; then only the supported counts.
        if value is not None and value not in TTA_VIEWS:
            raise ValueError(f"tta_views must be one of {TTA_VIEWS}")
        return value

    @field_validator("cors_origins")
    @classmethod
    def _no_wildcard(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if "*" in value:
            raise ValueError("a CORS wildcard is refused: list the origins that may call the API")
        return value

    @field_validator("extra_labels")
    @classmethod
    def _label_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for label in value:
            if not EXTRA_LABEL.fullmatch(label):
                raise ValueError(
                    f"extra label {label!r}: a word, with dots, plus, minus or inner spaces "
                    "(at most 100 characters)"
                )
        return tuple(dict.fromkeys(value))  # once each, in the order given

    @model_validator(mode="after")
    def _stale_after_beats(self) -> Settings:
        if self.teach_stale_s < 3 * self.teach_poll_s:
            raise ValueError(
                f"teach_stale_s ({self.teach_stale_s:g}) must be at least 3 x teach_poll_s "
                f"({self.teach_poll_s:g}): a running job would be taken back between heartbeats"
            )
        return self

    @field_validator("api_token", "database_url", "models_dir", "teach_base_dir", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @property
    def records_url(self) -> str | None:
        """The records database's URL: RBC_DATABASE_URL, else the SQLite file under data_dir;
        None when RBC_DATABASE_URL is "none" (no slides)."""
        if self.database_url is None:
            return default_url(self.data_dir)
        url = self.database_url.get_secret_value().strip()
        return None if url.lower() == "none" else url


@lru_cache
def get_settings() -> Settings:
    return Settings()
