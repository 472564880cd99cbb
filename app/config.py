"""Every tunable of the service, from environment variables prefixed RBC_ (see docs/service.md)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from core.tta import TTA_VIEWS

MIB = 1 << 20
# What Pillow calls the formats a client may send; sniffed from the bytes, never from the name.
DEFAULT_FORMATS = ("PNG", "JPEG", "TIFF", "BMP")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RBC_", frozen=True, protected_namespaces=())

    model_dir: Path = Path("models/default")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Intra-op threads for torch; 0 keeps torch's default (one per core).
    torch_threads: int = Field(default=0, ge=0)
    # Cells per forward pass; larger batches are split.
    inference_batch_size: int = Field(default=32, ge=1)
    # Test-time views averaged per cell (core/tta.py): unset takes the model card's; 1 is fastest.
    tta_views: int | None = None
    max_upload_bytes: int = Field(default=10 * MIB, ge=1, description="per image")
    max_request_bytes: int = Field(default=64 * MIB, ge=1, description="whole request body")
    max_pixels: int = Field(default=4096 * 4096, ge=1, description="width x height of one image")
    max_files: int = Field(default=256, ge=1, description="images per batch request")
    accepted_formats: Annotated[tuple[str, ...], NoDecode] = DEFAULT_FORMATS
    # A prediction whose top probability is below this is marked needs_review.
    review_threshold: float = Field(default=0.7, ge=0.0, le=1.0)
    # When set, the API asks for `Authorization: Bearer <token>`; the page asks for it once.
    api_token: SecretStr | None = None
    # Origins allowed to call the API from a browser page elsewhere; none by default, never "*".
    cors_origins: Annotated[tuple[str, ...], NoDecode] = ()
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"

    @field_validator("accepted_formats", "cors_origins", mode="before")
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

    @field_validator("api_token", mode="before")
    @classmethod
    def _empty_token_is_none(cls, value: object) -> object:
        return None if value == "" else value


@lru_cache
def get_settings() -> Settings:
    return Settings()
