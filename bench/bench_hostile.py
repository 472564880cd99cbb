"""Send hostile requests to the real server and measure what each one costs it, in one run.

    .venv/bin/python bench/bench_hostile.py --model models/default \
        [--smear-dir ../shared/datasets/chula-rbc-12] [--stalled 2000] [--only CASE,...]

Starts the real server (`python -m app`, uvicorn) as a subprocess on a free loopback port, its
stdout and stderr going to a log file, RBC_API_TOKEN unset; the `token-63mib` case starts a second
server with RBC_API_TOKEN=bench-token and stops it afterwards. While each case runs, one thread
samples the server's resident memory (RSS, /proc/PID/statm) every 20 ms and another asks GET
/healthz on a fresh connection every 0.2 s (a failure: no 200 within 2 s). Per case it prints the
HTTP status (or what happened to the connection), the wall time until the answer, the peak RSS
growth above the RSS just before the case (the peak is taken up to the moment RSS has settled after
it, at most 2 s), the /healthz failures during and just after it, the lines the server logged
(access lines of the /healthz probe left out) and PASS/FAIL against the case's target. Every input
is built in memory (Pillow, numpy, struct, zlib); the smear is tiled from real Chula RBC-12 fields.

Targets (issue: hostile input): every hostile case answered within 2 s, at most +300 MiB peak RSS,
no 5xx; the 32-image batch within +600 MiB (and 60 s); the 4096x4096 smear answered 200 or 413
within 60 s with at most +1536 MiB (the same cap for the disconnected smear, whose server must go
idle within 60 s); stalled and trickling connections closed by the server within 60 s; /healthz
answering throughout. Prints a table, then one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import errno
import io
import json
import os
import resource
import selectors
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from bench.bench_service import free_port

ROOT = Path(__file__).resolve().parent.parent

MIB = 1 << 20
PAGE = os.sysconf("SC_PAGE_SIZE")
CLK_TCK = os.sysconf("SC_CLK_TCK")
SIDE = 4096
HOSTILE_S = 2.0
HOSTILE_MIB = 300.0
BATCH_MIB = 600.0
SMEAR_S = 60.0
SMEAR_MIB = 1536.0
CLOSE_S = 60.0
EXIF_LOG_LINES = 5
TOKEN = "bench-token"
BOUNDARY = "bench-hostile-boundary"


def rss_mib(pid: int) -> float:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE / MIB


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of the process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def wait_idle(pid: int, limit_s: float, window_s: float = 0.5) -> float | None:
    """Seconds until the process used less than 5 % of one core over `window_s` (sampled every
    0.1 s), counted from the call; None if it was still busy after `limit_s`."""
    started = time.monotonic()
    history: list[tuple[float, float]] = []
    while time.monotonic() - started < limit_s:
        try:
            history.append((time.monotonic(), cpu_seconds(pid)))
        except (OSError, IndexError, ValueError):
            return time.monotonic() - started  # the process is gone
        now, cpu_now = history[-1]
        old = [h for h in history if h[0] <= now - window_s]
        if old:
            then, cpu_then = old[-1]
            if (cpu_now - cpu_then) / (now - then) < 0.05:
                return then - started
        time.sleep(0.1)
    return None


# --- the server and its two watchers ----------------------------------------------------------


class RssSampler(threading.Thread):
    """RSS of one process every 20 ms, kept with monotonic timestamps."""

    def __init__(self, pid: int) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.pid = pid
        self.samples: list[tuple[float, float]] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                value = rss_mib(self.pid)
            except (OSError, IndexError, ValueError):
                return  # the process is gone
            with self.lock:
                self.samples.append((time.monotonic(), value))
            self.stopping.wait(0.02)

    def window(self, since: float, until: float | None = None) -> list[float]:
        end = time.monotonic() if until is None else until
        with self.lock:
            return [v for t, v in self.samples if since <= t <= end]

    def settle(self, quiet_s: float = 0.3, band_mib: float = 1.0, limit_s: float = 2.0) -> float:
        """Wait until RSS moved less than `band_mib` over `quiet_s`, at most `limit_s`."""
        started = time.monotonic()
        while time.monotonic() - started < limit_s:
            time.sleep(0.05)
            if time.monotonic() - started < quiet_s:
                continue
            recent = self.window(time.monotonic() - quiet_s)
            if len(recent) >= 5 and max(recent) - min(recent) <= band_mib:
                break
        return time.monotonic() - started


def check_health(client: httpx.Client, url: str) -> str | None:
    """None when GET /healthz gives 200 within HOSTILE_S, else what went wrong."""
    started = time.perf_counter()
    try:
        response = client.get(url, timeout=HOSTILE_S)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__} after {time.perf_counter() - started:.1f}s"
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        return f"status {response.status_code}"
    if elapsed > HOSTILE_S:
        return f"slow {elapsed:.1f}s"
    return None


def fresh_client() -> httpx.Client:
    # No keep-alive: every probe opens a new connection, as a load balancer's check would.
    return httpx.Client(limits=httpx.Limits(max_keepalive_connections=0))


class HealthProbe(threading.Thread):
    def __init__(self, url: str, interval_s: float = 0.2) -> None:
        super().__init__(name="health-probe", daemon=True)
        self.url = url
        self.interval_s = interval_s
        self.records: list[tuple[float, str]] = []  # (start, failure)
        self.probes: list[float] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()

    def run(self) -> None:
        with fresh_client() as client:
            while not self.stopping.is_set():
                started = time.monotonic()
                failure = check_health(client, self.url)
                with self.lock:
                    self.probes.append(started)
                    if failure is not None:
                        self.records.append((started, failure))
                self.stopping.wait(self.interval_s)

    def failures(self, since: float, until: float) -> tuple[int, list[str]]:
        with self.lock:
            probes = sum(since <= t <= until for t in self.probes)
            return probes, [f for t, f in self.records if since <= t <= until]


class Server:
    """`python -m app` on a free loopback port, logging to a file, with its watchers."""

    def __init__(self, args: argparse.Namespace, log_dir: Path, token: str | None = None) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"server-{self.port}.log"
        env = {
            **os.environ,
            "RBC_MODEL_DIR": str(args.model),
            "RBC_PORT": str(self.port),
            "RBC_HOST": "127.0.0.1",
            "RBC_LOG_LEVEL": args.log_level,
        }
        env.pop("RBC_API_TOKEN", None)
        if token is not None:
            env["RBC_API_TOKEN"] = token
        if args.threads:
            env["RBC_TORCH_THREADS"] = str(args.threads)
        started = time.perf_counter()
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [args.server_python, "-m", "app"], cwd=ROOT, env=env, stdout=log, stderr=log
            )
        self.pid = self.process.pid
        while True:
            if self.process.poll() is not None:
                print(self.log_path.read_text()[-3000:], file=sys.stderr)
                raise SystemExit("the server exited before it was ready")
            if time.perf_counter() - started > 180:
                self.stop()
                raise SystemExit("the server was not ready within 180 s")
            try:
                if httpx.get(f"{self.base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.ready_s = time.perf_counter() - started
        self.rss_after_start_mib = rss_mib(self.pid)
        self.sampler = RssSampler(self.pid)
        self.sampler.start()
        self.probe = HealthProbe(f"{self.base}/healthz")
        self.probe.start()

    def rss(self) -> float:
        return rss_mib(self.pid)

    def log_lines(self) -> list[str]:
        lines = self.log_path.read_bytes().decode("utf-8", "replace").splitlines()
        return [line for line in lines if "GET /healthz" not in line]

    def stop(self) -> None:
        for watcher in (getattr(self, "sampler", None), getattr(self, "probe", None)):
            if watcher is not None:
                watcher.stopping.set()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


# --- inputs, built in memory ------------------------------------------------------------------


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def wide_png(width: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, 1), 128).save(buffer, format="PNG")
    return buffer.getvalue()


def huge_wide_png(width: int = SIDE * SIDE) -> bytes:
    """An 8-bit RGB PNG `width` x 1, all black, written without ever holding the row."""
    compressor = zlib.compressobj(9)
    parts = [compressor.compress(b"\x00")]  # the row's filter byte: none
    zeros = bytes(MIB)
    left = 3 * width
    while left:
        step = min(left, len(zeros))
        parts.append(compressor.compress(zeros[:step]))
        left -= step
    parts.append(compressor.flush())
    ihdr = struct.pack(">IIBBBBB", width, 1, 8, 2, 0, 0, 0)
    return b"".join(
        [
            b"\x89PNG\r\n\x1a\n",
            png_chunk(b"IHDR", ihdr),
            png_chunk(b"IDAT", b"".join(parts)),
            png_chunk(b"IEND", b""),
        ]
    )


def tiff_pages(pages: int) -> bytes:
    """A little-endian classic TIFF of `pages` 1x1 8-bit grey pages sharing one pixel byte."""
    ifd_size = 2 + 8 * 12 + 4
    first = 10  # header (8) + the pixel byte + one pad byte: IFDs on word boundaries

    def short(tag: int, value: int) -> bytes:
        return struct.pack("<HHIHH", tag, 3, 1, value, 0)

    def long(tag: int, value: int) -> bytes:
        return struct.pack("<HHII", tag, 4, 1, value)

    body = b"".join(
        [
            struct.pack("<H", 8),
            short(256, 1),  # ImageWidth
            short(257, 1),  # ImageLength
            short(258, 8),  # BitsPerSample
            short(259, 1),  # Compression: none
            short(262, 1),  # PhotometricInterpretation: black is zero
            long(273, 8),  # StripOffsets: the shared pixel byte
            short(278, 1),  # RowsPerStrip
            long(279, 1),  # StripByteCounts
        ]
    )
    ifds = [
        body + struct.pack("<I", first + (i + 1) * ifd_size if i + 1 < pages else 0)
        for i in range(pages)
    ]
    return b"II" + struct.pack("<HI", 42, first) + b"\x80\x00" + b"".join(ifds)


def check_tiff_pages() -> None:
    """Run once by hand: the TIFF builder makes files Pillow reads, with one frame per page."""
    with Image.open(io.BytesIO(tiff_pages(3))) as image:
        frames = getattr(image, "n_frames", 1)
        assert image.size == (1, 1) and frames == 3, (image.size, frames)
        for frame in range(3):
            image.seek(frame)
            image.load()


def uniform_png(side: int = SIDE) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (236, 204, 210)).save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def tiled_smear(smear_dir: Path, side: int = SIDE) -> Image.Image:
    """A side x side field tiled edge to edge from real smear images, last row/column cropped."""
    folder = smear_dir / "Dataset" if (smear_dir / "Dataset").is_dir() else smear_dir
    paths = sorted((p for p in folder.glob("*.jpg") if p.stem.isdigit()), key=lambda p: int(p.stem))
    if not paths:
        raise SystemExit(f"no smear JPEGs under {folder}: pass --smear-dir")
    canvas = Image.new("RGB", (side, side))
    x = y = row_height = 0
    index = 0
    while y < side:
        with Image.open(paths[index % len(paths)]) as opened:
            tile = opened.convert("RGB")
        canvas.paste(tile, (x, y))  # Pillow crops what falls outside the canvas
        index += 1
        row_height = max(row_height, tile.height)
        x += tile.width
        if x >= side:
            x, y, row_height = 0, y + row_height, 0
    return canvas


def bogus_exif(count: int = 5000) -> bytes:
    """An APP1 EXIF payload: one IFD of `count` entries with unknown tag numbers and bogus
    types, counts and offsets (most point far past the end of the block)."""
    from PIL import ExifTags, TiffTags

    known = set(ExifTags.TAGS) | set(TiffTags.TAGS_V2) | set(TiffTags.TAGS)
    rng = np.random.default_rng(0)
    tags: list[int] = []
    tag = 0xE000
    while len(tags) < count:
        if tag not in known:
            tags.append(tag)
        tag += 1
    entries = []
    for i, number in enumerate(tags):
        # Every tenth an unknown type; the others a real type with a count whose data would be
        # megabytes to gigabytes, at an offset past the end. (A small count at a bad offset
        # would make Pillow drop the rest of the IFD at once: one warning, not 5000.)
        if i % 10 == 9:
            kind = int(rng.choice([0, 13, 99, 0xFFFF]))
        else:
            kind = int(rng.choice([1, 2, 3, 4, 5, 7, 9, 10, 11, 12]))
        amount = int(rng.integers(1 << 20, 1 << 30))
        offset = int(rng.integers(1 << 20, 1 << 32))
        entries.append(struct.pack("<HHII", number, kind, amount, offset))
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", count) + b"".join(entries)
    return b"Exif\x00\x00" + tiff + struct.pack("<I", 0)


def exif_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (205, 95, 105)).save(
        buffer, format="JPEG", quality=90, exif=bogus_exif()
    )
    return buffer.getvalue()


def multipart_file(field_name: str, filename: str, data: bytes, content_type: str) -> bytes:
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field_name}"; '
        f'filename="{filename}"\r\nContent-Type: {content_type}\r\n\r\n'
    ).encode()
    return head + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def many_fields(count: int) -> bytes:
    parts = [
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="f{i}"\r\n\r\nx\r\n'.encode()
        for i in range(count)
    ]
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def request_head(path: str, length: int, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {length}\r\n{extra}\r\n"
    ).encode()


# --- raw-socket helpers -----------------------------------------------------------------------


def status_of(data: bytes) -> int | None:
    """The status code of a raw HTTP response's first line, if it is there."""
    line = data.split(b"\r\n", 1)[0].split()
    if len(line) >= 2 and line[0].startswith(b"HTTP/") and line[1].isdigit():
        return int(line[1])
    return None


def poll_closed(sock: socket.socket, seen: bytearray) -> bool:
    """True once the peer closed (EOF or error); data that arrives is appended to `seen`.
    Leaves the socket non-blocking: on a socket with a timeout, CPython waits for data before
    it calls recv, MSG_DONTWAIT or not."""
    sock.setblocking(False)
    while True:
        try:
            data = sock.recv(65536, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except OSError:
            return True
        if not data:
            return True
        seen += data


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


# --- the cases --------------------------------------------------------------------------------


@dataclass
class Context:
    args: argparse.Namespace
    log_dir: Path
    cache: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, build: Callable[[], Any]) -> Any:
        if key not in self.cache:
            self.cache[key] = build()
        return self.cache[key]

    def smear(self) -> Image.Image:
        image: Image.Image = self.get("smear", lambda: tiled_smear(self.args.smear_dir))
        return image

    def smear_jpeg(self, side: int = SIDE) -> bytes:
        data: bytes = self.get(
            f"smear-jpeg-{side}", lambda: jpeg(self.smear().crop((0, 0, side, side)))
        )
        return data


def timed_post(server: Server, path: str, case_timeout: float, **kwargs: Any) -> dict[str, Any]:
    timeout = case_timeout - 10  # the client gives up before the bench's watchdog does
    started = time.perf_counter()
    try:
        with httpx.Client(base_url=server.base, timeout=timeout) as client:
            response = client.post(path, **kwargs)
    except httpx.HTTPError as exc:
        return {
            "result": f"conn: {type(exc).__name__}",
            "status": None,
            "time_s": time.perf_counter() - started,
        }
    elapsed = time.perf_counter() - started
    detail = ""
    if response.status_code >= 400:
        try:
            detail = str(response.json().get("detail", ""))[:120]
        except (ValueError, AttributeError):
            detail = response.text[:120]
    return {
        "result": str(response.status_code),
        "status": response.status_code,
        "time_s": elapsed,
        "response_bytes": len(response.content),
        "detail": detail,
    }


def case_wide_png(ctx: Context, server: Server) -> dict[str, Any]:
    data = wide_png(20000)
    files = {"file": ("wide.png", data, "image/png")}
    return {
        **timed_post(server, "/predict", ctx.args.timeout, files=files),
        "input_bytes": len(data),
    }


def case_huge_wide_png(ctx: Context, server: Server) -> dict[str, Any]:
    data = ctx.get("huge-wide-png", huge_wide_png)
    files = {"file": ("huge-wide.png", data, "image/png")}
    return {
        **timed_post(server, "/predict", ctx.args.timeout, files=files),
        "input_bytes": len(data),
    }


def case_tiff_pages(ctx: Context, server: Server) -> dict[str, Any]:
    data = ctx.get("tiff-pages", lambda: tiff_pages(100_000))
    files = {"file": ("pages.tif", data, "image/tiff")}
    return {
        **timed_post(server, "/predict", ctx.args.timeout, files=files),
        "input_bytes": len(data),
    }


def case_batch(ctx: Context, server: Server) -> dict[str, Any]:
    data = ctx.get("uniform-png", uniform_png)
    files = [("files", (f"uniform{i}.png", data, "image/png")) for i in range(32)]
    outcome = timed_post(server, "/predict/batch", ctx.args.timeout, files=files)
    return {**outcome, "input_bytes": 32 * len(data)}


def case_smear(ctx: Context, server: Server) -> dict[str, Any]:
    data = ctx.smear_jpeg()
    files = {"file": ("smear.jpg", data, "image/jpeg")}
    outcome = timed_post(server, "/analyze/smear", ctx.args.timeout, files=files)
    return {**outcome, "input_bytes": len(data)}


def case_disconnect(ctx: Context, server: Server) -> dict[str, Any]:
    """The smear, or a smaller field of it while the server refuses the size with 413 (its
    per-field pixel cap), closed 1 s after it was sent: how long does the server work on?"""
    case_started = time.perf_counter()
    sides = [SIDE, SIDE // 2, 1400, 1024]  # 1400 x 1400: just under 2 Mpx
    refused: list[int] = []
    for side in sides:
        body = multipart_file("file", "smear.jpg", ctx.smear_jpeg(side), "image/jpeg")
        sock = connect(server.port, timeout=30)
        started = time.perf_counter()
        seen = bytearray()
        try:
            sock.sendall(request_head("/analyze/smear", len(body)) + body)
            sent_s = time.perf_counter() - started
            time.sleep(1.0)
            poll_closed(sock, seen)
        except OSError as exc:
            sent_s = time.perf_counter() - started
            seen += f"send failed: {exc}".encode()
        finally:
            sock.close()
        early = status_of(bytes(seen))
        if early == 413 and side != sides[-1]:
            refused.append(side)
            # The refusal's own work must be over before the next try is timed.
            wait_idle(server.pid, 30)
            continue
        left = ctx.args.timeout - 10 - (time.perf_counter() - case_started)
        idle_after = wait_idle(server.pid, left)
        return {
            "result": f"{early} before close, {side}px" if early else f"closed {side}px",
            "status": early,
            "time_s": idle_after,
            "side": side,
            "refused_sides": refused,
            "send_s": sent_s,
            "input_bytes": len(body),
            "work_after_disconnect_s": idle_after,
        }
    raise AssertionError("unreachable")


def watch_closures(
    socks: list[socket.socket],
    sent_at: list[float],
    window_s: float,
    checkpoints: tuple[float, ...],
    tick: Callable[[float], None] | None = None,
) -> dict[str, Any]:
    """Wait until the server closed `socks` or the youngest is `window_s` old; each socket's
    time is counted from `sent_at` (time.monotonic() when its request went out)."""
    started = time.monotonic()
    end = max(sent_at, default=started) + window_s
    selector = selectors.DefaultSelector()
    seen: dict[int, bytearray] = {}
    for i, sock in enumerate(socks):
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, i)
        seen[i] = bytearray()
    closed_at: dict[int, float] = {}
    next_tick = 1.0
    while len(closed_at) < len(socks) and time.monotonic() < end:
        for key, _ in selector.select(timeout=0.1):
            index = key.data
            if poll_closed(socks[index], seen[index]):
                closed_at[index] = time.monotonic() - sent_at[index]
                selector.unregister(socks[index])
        elapsed = time.monotonic() - started
        if tick is not None and elapsed >= next_tick:
            tick(elapsed)
            next_tick += 1.0
    selector.close()
    statuses: dict[str, int] = {}
    for index in closed_at:
        code = status_of(bytes(seen[index]))
        label = str(code) if code else "none"
        statuses[label] = statuses.get(label, 0) + 1
    counts = {f"closed_by_{c:g}s": sum(t <= c for t in closed_at.values()) for c in checkpoints}
    last = max(closed_at.values()) if closed_at else None
    return {
        "opened": len(socks),
        "closed": len(closed_at),
        **counts,
        "answers_before_close": statuses,
        "last_closed_s": last,
    }


def case_stalled_headers(ctx: Context, server: Server) -> dict[str, Any]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = ctx.args.stalled + 256
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    socks: list[socket.socket] = []
    sent_at: list[float] = []
    failed = ""
    opened_at = time.perf_counter()
    try:
        for _ in range(ctx.args.stalled):
            try:
                sock = connect(server.port, timeout=5)
                sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")
            except OSError as exc:
                failed = f"{len(socks)} opened, then {type(exc).__name__}: {exc}"
                break
            socks.append(sock)
            sent_at.append(time.monotonic())
        open_s = time.perf_counter() - opened_at
        figures = watch_closures(socks, sent_at, CLOSE_S + 1, (5, 15, 30, 60))
    finally:
        for sock in socks:
            sock.close()
    return {
        "result": f"closed {figures['closed']}/{figures['opened']}",
        "status": None,
        "time_s": figures["last_closed_s"] if figures["closed"] == len(socks) else None,
        "open_s": open_s,
        "open_failure": failed,
        **figures,
    }


def case_trickle_body(ctx: Context, server: Server) -> dict[str, Any]:
    prefix = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="t.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    socks = []
    sent_at = []
    try:
        for _ in range(20):
            sock = connect(server.port, timeout=5)
            sock.sendall(request_head("/predict", 100_000))
            socks.append(sock)
            sent_at.append(time.monotonic())
        sent = [0] * len(socks)
        dead: set[int] = set()

        def trickle(elapsed: float) -> None:
            for i, sock in enumerate(socks):
                if i in dead:
                    continue
                offset = sent[i]
                byte = prefix[offset : offset + 1] or b"x"
                try:
                    sent[i] += sock.send(byte)
                except BlockingIOError:
                    pass
                except OSError:
                    dead.add(i)

        figures = watch_closures(socks, sent_at, CLOSE_S + 1, (5, 15, 30, 60), tick=trickle)
    finally:
        for sock in socks:
            sock.close()
    return {
        "result": f"closed {figures['closed']}/{figures['opened']}",
        "status": None,
        "time_s": figures["last_closed_s"] if figures["closed"] == len(socks) else None,
        "bytes_trickled_max": max(sent),
        **figures,
    }


def chunks(total: int, size: int = MIB) -> Iterator[bytes]:
    block = b"\x00" * size
    left = total
    while left:
        step = min(left, size)
        yield block[:step]
        left -= step


def case_token(ctx: Context, server: Server) -> dict[str, Any]:
    """63 MiB without a token: how much does the server read before it says 401?"""
    total = 63 * MIB
    sock = connect(server.port, timeout=10)
    sock.setblocking(False)
    started = time.perf_counter()
    deadline = started + ctx.args.timeout - 15
    sent = 0
    reply = bytearray()
    how = "answered"
    head = request_head("/predict", total)
    pending = memoryview(head)
    source = chunks(total)
    closed = False
    try:
        while time.perf_counter() < deadline:
            if not pending and sent < total + len(head):
                pending = memoryview(next(source, b""))
            want_write = len(pending) > 0
            selector_r, selector_w = select_one(sock, want_write, 0.5)
            if selector_r:
                closed = poll_closed(sock, reply)
                if b"\r\n\r\n" in reply or closed:
                    break
            if selector_w and pending:
                try:
                    n = sock.send(pending)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    how = f"send failed: {errno.errorcode.get(exc.errno or 0, exc)}"
                    time.sleep(0.2)
                    poll_closed(sock, reply)
                    break
                pending = pending[n:]
                sent += n
        else:
            how = "no answer"
        # The whole reply (headers at least) once the status line is there.
        reply_deadline = time.perf_counter() + 2
        while b"\r\n\r\n" not in reply and not closed and time.perf_counter() < reply_deadline:
            closed = poll_closed(sock, reply)
            time.sleep(0.01)
    finally:
        sock.close()
    elapsed = time.perf_counter() - started
    status = status_of(bytes(reply))
    body_sent = max(0, sent - len(head))
    return {
        "result": str(status) if status else how,
        "status": status,
        "time_s": elapsed,
        "how": how,
        "body_bytes_sent_before_answer": body_sent,
        "body_bytes": total,
    }


def select_one(sock: socket.socket, want_write: bool, timeout: float) -> tuple[bool, bool]:
    with selectors.DefaultSelector() as selector:
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if want_write else 0)
        selector.register(sock, events)
        ready = selector.select(timeout)
    mask = ready[0][1] if ready else 0
    return bool(mask & selectors.EVENT_READ), bool(mask & selectors.EVENT_WRITE)


def case_exif(ctx: Context, server: Server) -> dict[str, Any]:
    data = exif_jpeg()
    before = len(server.log_lines())
    files = {"file": ("exif.jpg", data, "image/jpeg")}
    outcome = timed_post(server, "/predict", ctx.args.timeout, files=files)
    time.sleep(0.5)  # let the server's buffered stderr reach the file
    lines = server.log_lines()[before:]
    return {**outcome, "input_bytes": len(data), "log_sample": [line[:160] for line in lines[:3]]}


def case_many_parts(ctx: Context, server: Server) -> dict[str, Any]:
    body = many_fields(1001)
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    outcome = timed_post(server, "/predict/batch", ctx.args.timeout, content=body, headers=headers)
    return {**outcome, "input_bytes": len(body)}


def case_405(ctx: Context, server: Server) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        response = httpx.get(f"{server.base}/predict", timeout=ctx.args.timeout)
    except httpx.HTTPError as exc:
        return {"result": f"conn: {type(exc).__name__}", "status": None, "time_s": None}
    return {
        "result": str(response.status_code),
        "status": response.status_code,
        "time_s": time.perf_counter() - started,
        "allow": response.headers.get("allow"),
    }


# --- targets ----------------------------------------------------------------------------------


def answered(row: dict[str, Any], limit_s: float, cap_mib: float) -> list[str]:
    misses = []
    status = row.get("status")
    if status is None:
        misses.append("no HTTP answer")
    elif status >= 500:
        misses.append(f"{status} is a server error")
    if row.get("time_s") is None or row["time_s"] > limit_s:
        misses.append(f"not answered within {limit_s:g} s")
    if row["peak_growth_mib"] > cap_mib:
        misses.append(f"peak +{row['peak_growth_mib']:.0f} MiB > {cap_mib:g}")
    return misses


def closed_all(row: dict[str, Any]) -> list[str]:
    misses = []
    if row.get("open_failure"):
        misses.append(f"could not open them all: {row['open_failure']}")
    within = row.get(f"closed_by_{CLOSE_S:g}s", 0)
    if within < row["opened"]:
        misses.append(f"{row['opened'] - within} still open after {CLOSE_S:g} s")
    if row["peak_growth_mib"] > HOSTILE_MIB:
        misses.append(f"peak +{row['peak_growth_mib']:.0f} MiB > {HOSTILE_MIB:g}")
    return misses


def target_exif(row: dict[str, Any]) -> list[str]:
    misses = answered(row, HOSTILE_S, HOSTILE_MIB)
    if row["log_lines"] > EXIF_LOG_LINES:
        misses.append(f"{row['log_lines']} log lines > {EXIF_LOG_LINES}")
    return misses


def target_status(expected: int) -> Callable[[dict[str, Any]], list[str]]:
    def target(row: dict[str, Any]) -> list[str]:
        misses = answered(row, HOSTILE_S, HOSTILE_MIB)
        if row.get("status") is not None and row["status"] != expected:
            misses.append(f"status {row['status']}, not {expected}")
        return misses

    return target


def target_405(row: dict[str, Any]) -> list[str]:
    misses = target_status(405)(row)
    if not row.get("allow"):
        misses.append("no Allow header")
    return misses


def target_token(row: dict[str, Any]) -> list[str]:
    misses = target_status(401)(row)
    if row["body_bytes_sent_before_answer"] >= row["body_bytes"]:
        misses.append("the whole body was sent before the answer")
    return misses


def target_smear(row: dict[str, Any]) -> list[str]:
    misses = answered(row, SMEAR_S, SMEAR_MIB)
    if row.get("status") not in (None, 200, 413):
        misses.append(f"status {row['status']}, not 200 or 413")
    return misses


def target_disconnect(row: dict[str, Any]) -> list[str]:
    misses = []
    if row.get("work_after_disconnect_s") is None:
        misses.append("the server was still busy when the bench gave up")
    elif row["work_after_disconnect_s"] > SMEAR_S:
        misses.append(f"busy {row['work_after_disconnect_s']:.0f} s after the disconnect")
    if row["peak_growth_mib"] > SMEAR_MIB:
        misses.append(f"peak +{row['peak_growth_mib']:.0f} MiB > {SMEAR_MIB:g}")
    return misses


@dataclass
class Case:
    name: str
    run: Callable[[Context, Server], dict[str, Any]]
    target: Callable[[dict[str, Any]], list[str]]
    goal: str
    token_server: bool = False


def hostile(row: dict[str, Any]) -> list[str]:
    return answered(row, HOSTILE_S, HOSTILE_MIB)


CASES = [
    Case("wide-png", case_wide_png, hostile, "<5xx, 2 s, +300 MiB"),
    Case("huge-wide-png", case_huge_wide_png, hostile, "<5xx, 2 s, +300 MiB"),
    Case("tiff-pages", case_tiff_pages, hostile, "<5xx, 2 s, +300 MiB"),
    Case(
        "batch-32-uniform-4096",
        case_batch,
        lambda row: answered(row, SMEAR_S, BATCH_MIB),
        "<5xx, 60 s, +600 MiB",
    ),
    Case("smear-4096", case_smear, target_smear, "200|413, 60 s, +1536 MiB"),
    Case("disconnect", case_disconnect, target_disconnect, "idle in 60 s, +1536 MiB"),
    Case("stalled-headers", case_stalled_headers, closed_all, "all closed in 60 s, +300"),
    Case("trickle-body", case_trickle_body, closed_all, "all closed in 60 s, +300"),
    Case("token-63mib", case_token, target_token, "401 before all sent, 2 s", True),
    Case("exif-5000", case_exif, target_exif, "<5xx, 2 s, +300, <=5 lines"),
    Case("many-parts", case_many_parts, target_status(413), "413, 2 s, +300 MiB"),
    Case("405", case_405, target_405, "405 + Allow, 2 s"),
]


# --- the run ----------------------------------------------------------------------------------


def run_case(case: Case, ctx: Context, server: Server) -> dict[str, Any]:
    """One case under a watchdog: RSS peak, /healthz failures and log lines around it."""
    lines_before = len(server.log_lines())
    baseline = server.rss()
    started = time.monotonic()
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["row"] = case.run(ctx, server)
        except Exception as exc:  # a bug or a surprise in the bench: report it, go on
            box["row"] = {"result": f"bench error: {type(exc).__name__}: {exc}", "status": None}

    worker = threading.Thread(target=work, name=case.name, daemon=True)
    worker.start()
    worker.join(ctx.args.timeout)
    row: dict[str, Any] = box.get("row") or {
        "result": f"bench timeout ({ctx.args.timeout:g} s)",
        "status": None,
        "time_s": None,
    }
    row.setdefault("time_s", None)
    answered_at = time.monotonic()
    # Work the server goes on with (a request the client gave up on) is part of this case.
    busy_after_s = wait_idle(server.pid, ctx.args.idle_limit)
    settle_s = server.sampler.settle()
    settled_at = time.monotonic()
    with fresh_client() as client:
        after = check_health(client, f"{server.base}/healthz")
    probes, failures = server.probe.failures(started, settled_at)
    if after is not None:
        failures = [*failures, f"after: {after}"]
    peak = max(server.sampler.window(started, settled_at), default=baseline)
    time.sleep(0.2)  # the server's log writes of this case
    row.update(
        {
            "baseline_rss_mib": baseline,
            "peak_growth_mib": max(0.0, peak - baseline),
            "rss_after_mib": server.rss(),
            "case_s": answered_at - started,
            "busy_after_s": busy_after_s,
            "settle_s": settle_s,
            "health_probes": probes,
            "health_failures": len(failures),
            "health_failure_sample": failures[:3],
            "log_lines": len(server.log_lines()) - lines_before,
        }
    )
    try:
        misses = case.target(row)
    except KeyError:  # the case ended before it measured what its target needs
        misses = [f"no figures: {row['result']}"]
    if failures:
        misses.append(f"/healthz failed {len(failures)}x: {failures[0]}")
    row["misses"] = misses
    row["pass"] = not misses
    return row


def fmt(value: float | None, width: int, digits: int = 2) -> str:
    return f"{value:{width}.{digits}f}" if value is not None else f"{'-':>{width}}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    parser.add_argument(
        "--smear-dir", type=Path, default=ROOT.parent / "shared" / "datasets" / "chula-rbc-12"
    )
    parser.add_argument("--stalled", type=int, default=2000, help="stalled-header sockets")
    parser.add_argument(
        "--only", help="comma-separated case names: " + ",".join(c.name for c in CASES)
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per case at most")
    parser.add_argument(
        "--idle-limit",
        type=float,
        default=240.0,
        help="after each case, wait at most this long for the server's CPU to go idle",
    )
    parser.add_argument("--threads", type=int, default=0, help="RBC_TORCH_THREADS (0: default)")
    parser.add_argument("--log-level", default="info", help="RBC_LOG_LEVEL of the servers")
    parser.add_argument("--server-python", default=sys.executable)
    args = parser.parse_args()
    if not (args.model / "model_card.json").is_file():
        raise SystemExit(f"no exported model at {args.model}: pass --model DIR")
    cases = CASES
    if args.only:
        wanted = [name.strip() for name in args.only.split(",") if name.strip()]
        unknown = set(wanted) - {c.name for c in CASES}
        if unknown:
            raise SystemExit(f"unknown cases: {', '.join(sorted(unknown))}")
        cases = [c for c in CASES if c.name in wanted]

    card = json.loads((args.model / "model_card.json").read_text())
    figures: dict[str, Any] = {
        "model": card.get("name"),
        "cores": os.cpu_count(),
        "stalled": args.stalled,
        "log_level": args.log_level,
    }
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-hostile-") as tmp:
        ctx = Context(args, Path(tmp))
        server = Server(args, Path(tmp))
        figures["time_to_ready_s"] = server.ready_s
        figures["rss_after_start_mib"] = server.rss_after_start_mib
        print(
            f"server pid {server.pid} on :{server.port}, ready in {server.ready_s:.1f} s, "
            f"RSS {server.rss_after_start_mib:.0f} MiB",
            flush=True,
        )
        try:
            for case in cases:
                target_server = server
                if case.token_server:
                    target_server = Server(args, Path(tmp), token=TOKEN)
                    figures["token_server_rss_after_start_mib"] = target_server.rss_after_start_mib
                try:
                    row = run_case(case, ctx, target_server)
                finally:
                    if target_server is not server:
                        target_server.stop()
                rows[case.name] = row
                print(
                    f"  {case.name:24s} {str(row['result'])[:22]:22s} "
                    f"{fmt(row['time_s'], 7)} s {row['peak_growth_mib']:7.0f} MiB  "
                    f"{'PASS' if row['pass'] else 'FAIL'}",
                    flush=True,
                )
            figures["rss_after_cases_mib"] = server.rss()
            figures["server_alive_at_end"] = server.process.poll() is None
        finally:
            server.stop()

    print()
    print(
        f"model {figures['model']}, {figures['cores']} cores, RSS after start "
        f"{figures['rss_after_start_mib']:.0f} MiB, after all cases "
        f"{figures.get('rss_after_cases_mib', float('nan')):.0f} MiB"
    )
    header = (
        f"{'case':24s} {'result':24s} {'time_s':>7s} {'+MiB':>6s} {'health':>7s} "
        f"{'log':>5s}  {'target':26s} verdict"
    )
    print(header)
    print("-" * len(header))
    for case in cases:
        row = rows[case.name]
        health = "ok" if not row["health_failures"] else f"{row['health_failures']}x"
        print(
            f"{case.name:24s} {str(row['result'])[:24]:24s} {fmt(row['time_s'], 7)} "
            f"{row['peak_growth_mib']:6.0f} {health:>7s} {row['log_lines']:5d}  "
            f"{case.goal:26s} {'PASS' if row['pass'] else 'FAIL'}"
        )
        for note in notes(case.name, row):
            print(f"{'':26s}{note}")
    passed = sum(rows[c.name]["pass"] for c in cases)
    print(
        f"targets: {passed}/{len(cases)} cases PASS" + ("" if passed == len(cases) else " (FAIL)")
    )
    figures["cases"] = rows
    figures["targets"] = {c.name: rows[c.name]["pass"] for c in cases}
    print(json.dumps(figures))


def notes(name: str, row: dict[str, Any]) -> list[str]:
    """The figures of a case worth a line under it, then why it missed its target."""
    out = []
    if row.get("detail"):
        out.append(f"detail: {row['detail']}")
    if "response_bytes" in row and name == "smear-4096":
        out.append(f"response {row['response_bytes']:,} bytes for {row['input_bytes']:,} in")
    if "work_after_disconnect_s" in row:
        busy = fmt(row["work_after_disconnect_s"], 0)
        refused = "".join(f", {side}px refused first" for side in row.get("refused_sides", []))
        out.append(f"{row['side']}px smear{refused}; work_after_disconnect_s {busy}")
        if row.get("status") == 200:
            out.append("the server answered within the 1 s before the close: nothing to cancel")
    if "opened" in row:
        counts = ", ".join(
            f"{k.removeprefix('closed_by_')} {v}"
            for k, v in row.items()
            if k.startswith("closed_by_")
        )
        answers = row["answers_before_close"]
        out.append(f"closed by the server of {row['opened']}: {counts}; answers {answers}")
    if "body_bytes_sent_before_answer" in row:
        out.append(
            f"body sent before the answer: {row['body_bytes_sent_before_answer']:,} of "
            f"{row['body_bytes']:,} bytes ({row['how']})"
        )
    if "allow" in row:
        out.append(f"Allow: {row['allow']}")
    if row.get("busy_after_s") is None or row["busy_after_s"] > 1:
        out.append(f"server busy {fmt(row.get('busy_after_s'), 0, 1)} s after the case ended")
    for line in row.get("log_sample", []):
        out.append(f"log: {line}")
    out.extend(f"miss: {m}" for m in row.get("misses", []))
    return out


if __name__ == "__main__":
    main()
