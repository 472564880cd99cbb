"""Slow and stalled clients against the real server (uvicorn with app/server.py's protocol),
with short limits so that the tests are quick: headers within 1 s, the body within 2 s."""

from __future__ import annotations

import io
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
from PIL import Image

from tests.app.helpers import LiveServer, cell_png, running_server

HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 2.0
MAX_CONNECTIONS = 40


@pytest.fixture(scope="module")
def strict_server(
    model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    log = tmp_path_factory.mktemp("strict") / "server.log"
    with running_server(
        model_dir,
        log,
        RBC_HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S),
        RBC_BODY_TIMEOUT_S=str(BODY_TIMEOUT_S),
        RBC_MAX_CONNECTIONS=str(MAX_CONNECTIONS),
        RBC_LOG_LEVEL="info",
    ) as server:
        yield server


def address(server: LiveServer) -> tuple[str, int]:
    parsed = urlparse(server.url)
    assert parsed.hostname and parsed.port
    return parsed.hostname, parsed.port


def closed_by_server(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(4096) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def wait_closed(socks: list[socket.socket], seconds: float) -> int:
    deadline = time.monotonic() + seconds
    while True:
        closed = sum(closed_by_server(s) for s in socks)
        if closed == len(socks) or time.monotonic() > deadline:
            return closed
        time.sleep(0.1)


def test_stalled_headers_are_closed_and_health_answers_throughout(
    strict_server: LiveServer,
) -> None:
    socks = []
    try:
        for _ in range(3 * MAX_CONNECTIONS):  # three times the cap: the oldest make room
            sock = socket.create_connection(address(strict_server))
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")
            socks.append(sock)
        health = httpx.get(strict_server.url + "/healthz", timeout=2)
        assert health.status_code == 200
        # Beyond the cap at once; all of them within the header timeout (plus slack).
        assert wait_closed(socks, 4 * HEADER_TIMEOUT_S + 2) == len(socks)
        assert httpx.get(strict_server.url + "/healthz", timeout=2).status_code == 200
    finally:
        for sock in socks:
            sock.close()


def test_trickled_body_gets_408_within_the_body_timeout(strict_server: LiveServer) -> None:
    sock = socket.create_connection(address(strict_server))
    try:
        sock.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n\r\n--b\r\n"
        )
        started = time.monotonic()
        answer = b""
        sock.settimeout(0.5)
        while time.monotonic() - started < BODY_TIMEOUT_S + 5:
            try:
                sock.sendall(b"x")
                chunk = sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                break
            if not chunk:
                break
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert time.monotonic() - started < BODY_TIMEOUT_S + 3
    finally:
        sock.close()


def test_ordinary_keep_alive_client_is_not_cut(strict_server: LiveServer) -> None:
    with httpx.Client(base_url=strict_server.url, timeout=10) as client:
        for _ in range(3):
            response = client.post("/predict", files={"file": ("c.png", cell_png())})
            assert response.status_code == 200
            time.sleep(0.5)  # idle between requests, under the keep-alive and header limits


def exif_with_bogus_tags(count: int) -> bytes:
    """An EXIF block whose IFD claims `count` tags, more than it holds: Pillow warns."""
    ifd = struct.pack("<H", count)
    for i in range(count):
        ifd += struct.pack("<HHII", 0x8000 + i, 3, 3, 0xFFFF)
    return b"Exif\0\0II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0)


def test_bogus_exif_writes_nothing_to_the_log(strict_server: LiveServer) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (24, 24), (200, 100, 110)).save(
        buffer, format="JPEG", exif=exif_with_bogus_tags(5000)
    )
    before = strict_server.log.read_text().splitlines()
    response = httpx.post(
        strict_server.url + "/predict", files={"file": ("e.jpg", buffer.getvalue())}, timeout=10
    )
    assert response.status_code == 200, response.text
    time.sleep(0.3)
    added = strict_server.log.read_text().splitlines()[len(before) :]
    noise = [line for line in added if "Warning" in line or "EXIF" in line or "Truncated" in line]
    assert noise == [], noise[:5]
