"""Bad input and odd images: exact status codes, `{"detail": ...}` bodies, never a 500."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.main import create_app
from tests.app.helpers import cell_array, cell_png, encode, make_settings, wait_ready


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height (8-bit grey) with a tiny IDAT: a decompression bomb's
    header, costing nothing to build."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def post(client: TestClient, data: bytes, name: str = "x.png", field: str = "file") -> object:
    return client.post("/predict", files={field: (name, data, "application/octet-stream")})


def assert_error(response: object, status: int, *words: str) -> None:
    assert response.status_code == status, response.text  # type: ignore[attr-defined]
    body = response.json()  # type: ignore[attr-defined]
    assert list(body) == ["detail"] and isinstance(body["detail"], str), body
    for word in words:
        assert word in body["detail"], body["detail"]


@pytest.fixture(scope="module")
def small(model_dir: Path) -> Iterator[TestClient]:
    """A service with small limits, to test them cheaply."""
    settings = make_settings(
        model_dir, max_upload_bytes=20_000, max_request_bytes=100_000, max_pixels=200 * 200
    )
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        yield c


# --- request shape ---------------------------------------------------------------------------


def test_no_file_is_400(client: TestClient) -> None:
    assert_error(client.post("/predict"), 400, "field 'file'")


def test_wrong_field_name_is_400(client: TestClient) -> None:
    assert_error(post(client, cell_png(), field="image"), 400, "field 'file'")


def test_json_body_is_400(client: TestClient) -> None:
    assert_error(client.post("/predict", json={"file": "x"}), 400)


def test_text_instead_of_file_is_400(client: TestClient) -> None:
    assert_error(client.post("/predict", data={"file": "not a file"}), 400)


def test_bad_query_is_400(client: TestClient) -> None:
    response = client.post(
        "/predict?heatmap=perhaps", files={"file": ("a.png", cell_png(), "image/png")}
    )
    assert_error(response, 400, "heatmap")


# Starlette's form parser leaves the half-written spool file to the garbage collector when the
# body breaks off; harmless (it is closed and removed then), but pytest would report it.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_broken_multipart_is_400(client: TestClient) -> None:
    response = client.post(
        "/predict",
        content=b"--b\r\nContent-Disposition: form-data; name=file; filename=a.png\r\n\r\nxx",
        headers={"Content-Type": "multipart/form-data; boundary=b"},
    )
    assert response.status_code in (400, 422)
    assert list(response.json()) == ["detail"]


def test_unknown_path_is_404_json(client: TestClient) -> None:
    assert_error(client.get("/nothing/here"), 404)


# --- sizes -------------------------------------------------------------------------------------


def test_file_over_byte_limit_is_413(small: TestClient) -> None:
    noisy = np.random.default_rng(0).integers(0, 256, size=(150, 150, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noisy))
    assert 20_000 < len(data) < 100_000
    assert_error(post(small, data), 413, "20,000-byte")


def test_body_over_limit_is_413_by_content_length(small: TestClient) -> None:
    assert_error(post(small, b"\0" * 200_000), 413, "100,000-byte")


def test_body_over_limit_is_413_when_streamed(small: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b"--b\r\nContent-Disposition: form-data; name=file; filename=a.png\r\n\r\n"
        for _ in range(30):
            yield b"\0" * 10_000

    response = small.post(
        "/predict",
        content=chunks(),
        headers={"Content-Type": "multipart/form-data; boundary=b"},
    )
    assert_error(response, 413, "100,000-byte")


def test_too_many_pixels_is_413(small: TestClient) -> None:
    assert_error(post(small, png_header_only(300, 300)), 413, "300x300")


def test_decompression_bomb_is_413(client: TestClient) -> None:
    # Past Pillow's own bomb limit: refused when the header is read, before any decoding.
    assert_error(post(client, png_header_only(40_000, 40_000)), 413, "pixels")


# --- not images, wrong formats ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "empty"),
        (b"hello, I am text pretending to be a PNG", "not an image"),
        (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj", "not an image"),
    ],
)
def test_not_an_image_is_422(client: TestClient, data: bytes, words: str) -> None:
    assert_error(post(client, data, name="cell.png"), 422, words)


def test_truncated_png_is_422(client: TestClient) -> None:
    noisy = np.random.default_rng(1).integers(0, 256, size=(40, 40, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noisy))
    assert_error(post(client, data[: len(data) // 2]), 422, "corrupt or truncated")


def test_truncated_jpeg_is_422(client: TestClient) -> None:
    noisy = np.random.default_rng(2).integers(0, 256, size=(96, 96, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noisy), "JPEG", quality=95)
    assert_error(post(client, data[: len(data) // 2], name="a.jpg"), 422, "truncated")


@pytest.mark.parametrize(("fmt", "name"), [("GIF", "GIF"), ("WEBP", "WEBP"), ("ICO", "ICO")])
def test_other_formats_are_415(client: TestClient, fmt: str, name: str) -> None:
    data = encode(Image.fromarray(cell_array((32, 32))), fmt)
    assert_error(post(client, data, name="cell.png"), 415, name, "PNG, JPEG, TIFF, BMP")


def test_formats_are_sniffed_not_named(client: TestClient) -> None:
    # A JPEG called .png is a JPEG: accepted.
    data = encode(Image.fromarray(cell_array()), "JPEG", quality=95)
    assert post(client, data, name="cell.png").status_code == 200  # type: ignore[attr-defined]


# --- image modes ---------------------------------------------------------------------------------


def _mode_images() -> dict[str, bytes]:
    rgb = Image.fromarray(cell_array((30, 26)))
    grey16 = np.asarray(rgb.convert("L"), dtype=np.uint16) * 257
    palette_t = rgb.convert("P")
    palette_t.info["transparency"] = 0
    return {
        "rgb-png": encode(rgb),
        "grey-L": encode(rgb.convert("L")),
        "bilevel-1": encode(rgb.convert("1")),
        "grey-16-bit-png": encode(Image.fromarray(grey16)),
        "grey-16-bit-tiff": encode(Image.fromarray(grey16), "TIFF"),
        "grey-alpha-LA": encode(rgb.convert("LA")),
        "rgba": encode(rgb.convert("RGBA")),
        "palette": encode(rgb.convert("P")),
        "palette-transparent": encode(palette_t, transparency=0),
        "cmyk-jpeg": encode(rgb.convert("CMYK"), "JPEG"),
        "cmyk-tiff": encode(rgb.convert("CMYK"), "TIFF"),
        "ycbcr-jpeg": encode(rgb, "JPEG", quality=90),
        "bmp": encode(rgb, "BMP"),
        "tiff-lzw": encode(rgb, "TIFF", compression="tiff_lzw"),
        "int32-tiff": encode(Image.fromarray(grey16.astype(np.int32), mode="I"), "TIFF"),
    }


@pytest.mark.parametrize(("name", "data"), list(_mode_images().items()))
def test_every_mode_is_classified(client: TestClient, name: str, data: bytes) -> None:
    response = post(client, data, name=name)
    assert response.status_code == 200, response.text  # type: ignore[attr-defined]
    probs = response.json()["probabilities"]  # type: ignore[attr-defined]
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)


def test_16_bit_grey_is_scaled_not_clipped(client: TestClient) -> None:
    grey8 = np.asarray(Image.fromarray(cell_array((30, 26))).convert("L"))
    as16 = encode(Image.fromarray(grey8.astype(np.uint16) * 257))
    as8 = encode(Image.fromarray(grey8))
    p16 = post(client, as16).json()["probabilities"]  # type: ignore[attr-defined]
    p8 = post(client, as8).json()["probabilities"]  # type: ignore[attr-defined]
    assert p16 == pytest.approx(p8, abs=1e-6)


def test_exif_rotation_is_applied(client: TestClient) -> None:
    upright = Image.fromarray(cell_array((40, 24), seed=2))
    # Stored turned on its side, with the EXIF tag (6: rotate 270 to display) that undoes it.
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = encode(stored, "TIFF", exif=exif)
    plain = encode(upright, "TIFF")
    turned = encode(stored, "TIFF")
    p_rot = post(client, rotated, "r.tif").json()["probabilities"]  # type: ignore[attr-defined]
    p_plain = post(client, plain, "p.tif").json()["probabilities"]  # type: ignore[attr-defined]
    p_turned = post(client, turned, "t.tif").json()["probabilities"]  # type: ignore[attr-defined]
    assert p_rot == pytest.approx(p_plain, abs=1e-6)
    assert p_turned != pytest.approx(p_plain, abs=1e-6)


def test_float_image_is_422(client: TestClient) -> None:
    data = encode(Image.fromarray(np.ones((20, 20), dtype=np.float32)), "TIFF")
    assert_error(post(client, data, name="f.tif"), 422, "floating-point")


def test_animated_png_is_422(client: TestClient) -> None:
    frames = [Image.fromarray(cell_array(seed=s)) for s in range(3)]
    data = encode(frames[0], "PNG", save_all=True, append_images=frames[1:])
    assert_error(post(client, data), 422, "several frames")


def test_multipage_tiff_is_422(client: TestClient) -> None:
    frames = [Image.fromarray(cell_array(seed=s)) for s in range(2)]
    data = encode(frames[0], "TIFF", save_all=True, append_images=frames[1:])
    assert_error(post(client, data, name="a.tif"), 422, "several frames")


def test_tiny_and_lopsided_images_work(client: TestClient) -> None:
    for size in ((1, 1), (1, 10), (300, 30)):
        data = encode(Image.fromarray(cell_array(size)))
        assert post(client, data).status_code == 200, size  # type: ignore[attr-defined]


def test_strips_are_refused_from_the_header(client: TestClient) -> None:
    # 1x300 and 300x2 are no picture of a cell; a 20000x1 one used to cost 13 s and 2.6 GB.
    for size in ((1, 300), (300, 2)):
        data = encode(Image.fromarray(cell_array(size)))
        assert_error(post(client, data), 422, f"{size[0]}x{size[1]}", "10 times longer")


def test_hostile_names_come_back_as_data(client: TestClient) -> None:
    name = "<img src=x onerror=alert(1)>.png"
    response = client.post(
        "/predict/batch", files=[("files", (name, b"not an image", "image/png"))]
    )
    assert response.status_code == 200
    item = response.json()["results"][0]
    assert item["filename"] == name and item["error"]["status"] == 422
    assert response.headers["content-type"] == "application/json"


def test_garbage_bytes_never_500(client: TestClient) -> None:
    rng = np.random.default_rng(7)
    good = cell_png()
    for i in range(40):
        data = bytearray(good)
        for _ in range(int(rng.integers(1, 20))):
            data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
        if i % 3 == 0:
            data = data[: int(rng.integers(1, len(data)))]
        response = post(client, bytes(data))
        assert response.status_code in (200, 413, 415, 422), response.text  # type: ignore[attr-defined]


def test_bytes_io_is_not_touched_on_disk(client: TestClient, tmp_path: Path) -> None:
    # A file name that is a path is only a name: nothing is read from or written to it.
    target = tmp_path / "secret.png"
    target.write_bytes(cell_png())
    response = client.post(
        "/predict", files={"file": (str(target), io.BytesIO(b"nope"), "image/png")}
    )
    assert_error(response, 422)
    assert target.read_bytes() == cell_png()
