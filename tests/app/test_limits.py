"""Bounded cost per request (issue #10): one test per hostile input that once cost the service
far more than it should, plus the protocol-level answers (Allow, nosniff, 413 for too many parts,
the token before the body, the docs without a CDN, the schema). Time and memory per case are
measured by bench/bench_hostile.py, not asserted here."""

from __future__ import annotations

import io
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from app.middleware import IdentityGate
from core.classify.predictor import Predictor
from core.imageio import has_more_frames
from tests.app.helpers import cell_png, encode, make_settings, wait_ready
from tests.app.test_inputs import assert_error
from tests.synthetic import make_smear


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def wide_png(width: int, height: int = 1) -> bytes:
    """A valid 8-bit grey PNG of width x height zeros, built without allocating the image
    (a 16777216x1 one is ~16 KB)."""
    packer = zlib.compressobj(9)
    row = b"\0" * (width + 1)  # filter byte + pixels
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def many_page_tiff(pages: int) -> bytes:
    """A classic little-endian TIFF of `pages` 1x1 grey pages sharing one pixel byte."""
    entries = 8
    ifd_size = 2 + 12 * entries + 4
    pixel_at = 8
    first_ifd = 10  # header (8) + pixel (1) + pad (1)
    out = bytearray(struct.pack("<2sHI", b"II", 42, first_ifd) + b"\x80\0")
    for page in range(pages):
        at = first_ifd + page * ifd_size
        following = at + ifd_size if page + 1 < pages else 0
        tags = [
            (256, 3, 1, 1),  # ImageWidth
            (257, 3, 1, 1),  # ImageLength
            (258, 3, 1, 8),  # BitsPerSample
            (259, 3, 1, 1),  # Compression: none
            (262, 3, 1, 1),  # Photometric: black is zero
            (273, 4, 1, pixel_at),  # StripOffsets
            (278, 3, 1, 1),  # RowsPerStrip
            (279, 4, 1, 1),  # StripByteCounts
        ]
        out += struct.pack("<H", entries)
        for tag, kind, count, value in tags:
            out += struct.pack("<HHII", tag, kind, count, value)
        out += struct.pack("<I", following)
    return bytes(out)


def uniform_png(side: int) -> bytes:
    return encode(Image.new("RGB", (side, side), (220, 180, 190)))


def tiled_smear(tiles: int) -> bytes:
    array, _, _ = make_smear()
    return encode(Image.fromarray(np.tile(array, (tiles, tiles, 1))))


def post_smear(client: TestClient, data: bytes, query: str = "") -> Any:
    return client.post("/analyze/smear" + query, files={"file": ("f.png", data)})


# --- the rows of issue #10's table -------------------------------------------------------------


def test_20000x1_png_is_refused_from_its_header(client: TestClient) -> None:
    data = wide_png(20_000)
    assert len(data) < 200
    assert_error(client.post("/predict", files={"file": ("w.png", data)}), 422, "20000x1")


def test_16777216x1_png_inside_the_pixel_cap_is_a_422_not_a_500(client: TestClient) -> None:
    data = wide_png(16_777_216)
    assert_error(client.post("/predict", files={"file": ("w.png", data)}), 422, "16777216x1")


def test_multi_page_check_reads_one_page_not_all() -> None:
    data = many_page_tiff(100_000)
    assert 9_000_000 < len(data) < 11_000_000
    with Image.open(io.BytesIO(data)) as image:
        assert has_more_frames(image)
        assert image._n_frames is None  # type: ignore[attr-defined]  # the pages were not walked
    with Image.open(io.BytesIO(many_page_tiff(3))) as image:
        assert getattr(image, "n_frames", 1) == 3  # the builder makes what Pillow reads


def test_tiff_of_100000_pages_is_422(client: TestClient) -> None:
    response = client.post("/predict", files={"file": ("p.tif", many_page_tiff(100_000))})
    assert_error(response, 422, "several frames")


def test_batch_keeps_input_size_images_only(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[int, int]] = []
    original = Predictor.predict

    def recording(self: Predictor, images: Any, *args: Any, **kwargs: Any) -> Any:
        seen.extend(image.size for image in images)
        return original(self, images, *args, **kwargs)

    monkeypatch.setattr(Predictor, "predict", recording)
    with TestClient(create_app(make_settings(model_dir))) as c:
        wait_ready(c)
        size = c.app.state.model_slot.predictor.preprocess.size  # type: ignore[attr-defined]
        big = uniform_png(4096)
        files = [("files", (f"{i}.png", big)) for i in range(4)]
        response = c.post("/predict/batch", files=files)
    assert response.status_code == 200, response.text
    assert response.json()["summary"]["classified"] == 4
    assert seen == [(size, size)] * 4


def test_big_cell_image_shrunk_while_decoding_keeps_its_answer(client: TestClient) -> None:
    """A 960x960 cell is box-reduced to 137x137 as it is decoded: the probabilities stay those
    of the full-size image brought to the input size in one step."""
    cell = Image.open(io.BytesIO(cell_png(seed=1))).convert("RGB")
    big = cell.resize((960, 960), Image.Resampling.BICUBIC)
    predictor = client.app.state.model_slot.predictor  # type: ignore[attr-defined]
    (full,) = predictor.predict([big])
    served = client.post("/predict", files={"file": ("b.png", encode(big))}).json()
    assert served["probabilities"] == pytest.approx(full.probabilities, abs=0.02)


def test_4096_smear_is_413_from_its_header_with_how_to_split(client: TestClient) -> None:
    data = encode(Image.new("RGB", (4096, 4096), (230, 200, 205)), "JPEG")
    response = post_smear(client, data)
    assert_error(response, 413, "4096x4096", "split it into", "tiles")


def test_smear_budget_follows_the_scale(model_dir: Path) -> None:
    settings = make_settings(model_dir, max_smear_pixels=400 * 400)
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        data = tiled_smear(2)  # 640x480
        assert_error(post_smear(c, data), 413, "640x480", "split it into")
        # The same field at half the training scale's pixel count per side fits.
        assert post_smear(c, data, "?microns_per_pixel=0.095").status_code == 200


def test_smear_cell_budget(model_dir: Path) -> None:
    with TestClient(create_app(make_settings(model_dir, max_smear_cells=3))) as c:
        wait_ready(c)
        assert_error(post_smear(c, tiled_smear(1)), 413, "red cells", "at most 3")


@pytest.fixture()
def gated(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """One heavy slot, a short wait, and a smear analysis that takes 1.5 s."""
    import app.analysis as analysis

    real = analysis.analyze_smear

    def slow(*args: Any, **kwargs: Any) -> Any:
        time.sleep(1.5)
        return real(*args, **kwargs)

    monkeypatch.setattr(analysis, "analyze_smear", slow)
    settings = make_settings(model_dir, heavy_concurrency=1, heavy_wait_s=0.3, heavy_batch_files=2)
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        yield c


def test_heavy_requests_wait_then_get_503_while_light_ones_answer(gated: TestClient) -> None:
    data, _, _ = make_smear()
    field = encode(Image.fromarray(data))
    answers: list[Any] = []
    worker = threading.Thread(target=lambda: answers.append(post_smear(gated, field)))
    worker.start()
    time.sleep(0.4)  # the first smear holds the only slot for ~1.5 s
    busy = post_smear(gated, field)
    many = [("files", (f"{i}.png", cell_png(seed=i))) for i in range(3)]
    busy_batch = gated.post("/predict/batch", files=many)
    light_batch = gated.post("/predict/batch", files=many[:2])
    single = gated.post("/predict", files={"file": ("c.png", cell_png())})
    health = gated.get("/healthz")
    worker.join()
    assert_error(busy, 503, "busy", "whole fields")
    assert busy.headers["Retry-After"] == "1"
    assert_error(busy_batch, 503, "large batches")
    assert light_batch.status_code == 200 and single.status_code == 200
    assert health.status_code == 200
    assert answers[0].status_code == 200


def test_work_stops_when_the_client_has_gone(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real app, called over ASGI by a client that disconnects once its body is sent:
    the smear is segmented, then stopped before a single cell is classified."""
    calls: list[int] = []
    original = Predictor.predict

    def counting(self: Predictor, images: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(len(images))
        return original(self, images, *args, **kwargs)

    monkeypatch.setattr(Predictor, "predict", counting)
    array, _, _ = make_smear()
    boundary = "bound"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="s.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + encode(Image.fromarray(array))
        + f"\r\n--{boundary}--\r\n".encode()
    )
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/analyze/smear",
        "raw_path": b"/analyze/smear",
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"content-type", f"multipart/form-data; boundary={boundary}".encode()),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "state": client.app_state.copy(),
    }
    sent_body = False
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    async def call() -> None:
        await client.app(scope, receive, send)  # type: ignore[arg-type]

    anyio.run(call)
    assert statuses == [499]
    assert calls == []


def test_token_is_checked_before_the_body_is_read() -> None:
    reads = 0

    async def receive() -> dict[str, Any]:
        nonlocal reads
        reads += 1
        return {"type": "http.request", "body": b"\0" * (1 << 20), "more_body": True}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("the route must not run without the token")

    messages: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    gate = IdentityGate(app, api_token="secret", analysis_paths={"/predict"})
    for auth in ([], [(b"authorization", b"Bearer wrong")]):
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/predict",
            "headers": [(b"content-length", b"66060288"), *auth],
        }
        anyio.run(gate, scope, receive, send)
    starts = [m for m in messages if m["type"] == "http.response.start"]
    assert [m["status"] for m in starts] == [401, 401]
    assert all((b"connection", b"close") in m["headers"] for m in starts)
    assert reads == 0


def test_token_gate_lets_the_right_token_through(model_dir: Path) -> None:
    with TestClient(create_app(make_settings(model_dir, api_token="s3cret"))) as c:
        wait_ready(c)
        files = {"file": ("c.png", cell_png())}
        assert_error(c.post("/predict", files=files), 401, "needs a token")
        ok = c.post("/predict", files=files, headers={"Authorization": "bearer s3cret"})
        assert ok.status_code == 200, ok.text
        assert c.get("/healthz").status_code == 200  # health needs no token
        schema = c.get("/openapi.json").json()
    assert schema["paths"]["/predict"]["post"]["security"] == [{"HTTPBearer": []}]


# --- protocol answers ---------------------------------------------------------------------------


def test_405_keeps_allow(client: TestClient) -> None:
    response = client.get("/predict")
    assert_error(response, 405)
    assert response.headers["Allow"] == "POST"


def test_more_than_1000_parts_is_413(client: TestClient) -> None:
    fields = {f"f{i}": "x" for i in range(1001)}
    response = client.post("/predict/batch", data=fields, files={"files": ("a.png", cell_png())})
    assert_error(response, 413, "Too many fields")


def test_every_answer_has_nosniff_and_a_referrer_policy(client: TestClient) -> None:
    for response in (
        client.get("/healthz"),
        client.get("/nothing"),
        client.get("/predict"),
        client.post("/predict", files={"file": ("e.png", b"")}),
        client.get("/"),
        client.get("/static/app.js"),
    ):
        assert response.headers["X-Content-Type-Options"] == "nosniff", response.url
        assert response.headers["Referrer-Policy"] == "no-referrer", response.url


def test_docs_page_loads_no_third_party_script(client: TestClient) -> None:
    import re

    page = client.get("/docs")
    assert page.status_code == 200
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sources and all(s.startswith("/docs/assets/") for s in sources), sources
    for source in sources:
        assert client.get(source).status_code == 200, source
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self' 'sha256-" in csp and "http" not in csp
    assert client.get("/redoc").status_code == 404


def test_schema_says_what_the_server_does(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    predict = schema["paths"]["/predict"]["post"]
    assert "security" not in predict  # no token configured: none asked for
    smear = schema["paths"]["/analyze/smear"]["post"]
    (scale,) = [p for p in smear["parameters"] if p["name"] == "microns_per_pixel"]
    bounds = scale["schema"]["anyOf"][0]
    assert (bounds["minimum"], bounds["maximum"]) == (0.01, 5.0)
    error = smear["responses"]["413"]["content"]["application/json"]["schema"]
    assert error == {"$ref": "#/components/schemas/ErrorOut"}
    assert "503" in smear["responses"] and "408" in smear["responses"]
