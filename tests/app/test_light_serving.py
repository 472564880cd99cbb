"""The light serving install (issue 28): the service as `scripts/serve.sh` and the Docker image
install it has no torch (nor anything else only training uses), and answers as the training
install's torch network does.

The server runs in a process where every training-only package is made unimportable
(`sys.modules[name] = None`: `import torch` fails there and `importlib.util.find_spec` says it is
absent), so any import of one on the serving path fails these tests. The reference is the same
service on the torch engine (RBC_ENGINE=torch) of this, the training, install."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.app.helpers import ROOT, LiveServer, cell_png, encode, running_server
from tests.synthetic import make_smear

DETECTOR = ROOT / "models" / "detector"
# What only the `train` extra installs (pyproject.toml): never needed to serve.
TRAINING_ONLY = (
    "torch",
    "torchvision",
    "fastai",
    "fastcore",
    "pandas",
    "matplotlib",
    "sklearn",
    "yaml",
    "tqdm",
    "efficientnet_lite_pytorch",
    "onnx",
    "training",
)
WITHOUT_TRAINING = (
    "import runpy, sys\n"
    f"for name in {TRAINING_ONLY!r}:\n"
    "    sys.modules[name] = None\n"
    "runpy.run_module('app', run_name='__main__', alter_sys=True)\n"
)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, LiveServer]]:
    """(light: no training packages, reference: the torch engine), both models, slides on."""
    logs = tmp_path_factory.mktemp("light")
    model = ROOT / "models" / "default"
    common = {"RBC_DETECTOR_DIR": str(DETECTOR)}
    light_db = f"sqlite:///{logs / 'light.sqlite3'}"
    reference_db = f"sqlite:///{logs / 'reference.sqlite3'}"
    with (
        running_server(
            model,
            logs / "light.log",
            [sys.executable, "-c", WITHOUT_TRAINING],
            RBC_DATABASE_URL=light_db,
            **common,
        ) as light,
        running_server(
            model,
            logs / "reference.log",
            RBC_ENGINE="torch",
            RBC_DATABASE_URL=reference_db,
            **common,
        ) as reference,
    ):
        yield light, reference


def test_the_light_service_runs_both_models_on_onnx_runtime(
    servers: tuple[LiveServer, LiveServer],
) -> None:
    light, reference = servers
    card = httpx.get(light.url + "/model", timeout=30).json()
    assert card["served_engine"].startswith("onnxruntime ")
    assert card["detector"]["served_engine"].startswith("onnxruntime ")
    assert card["served_heatmaps"] is False  # heatmaps need torch
    theirs = httpx.get(reference.url + "/model", timeout=30).json()
    assert theirs["served_engine"].startswith("torch ") and theirs["served_heatmaps"] is True


def test_cells_get_the_torch_networks_answers_and_no_heatmap(
    servers: tuple[LiveServer, LiveServer],
) -> None:
    light, reference = servers
    files = [("files", (f"{i}.png", cell_png(seed=i, size=(20 + i, 26)))) for i in range(12)]
    ours = httpx.post(light.url + "/predict/batch", files=files, timeout=120)
    theirs = httpx.post(reference.url + "/predict/batch", files=files, timeout=120)
    assert ours.status_code == theirs.status_code == 200, ours.text
    a = [r["prediction"] for r in ours.json()["results"]]
    b = [r["prediction"] for r in theirs.json()["results"]]
    assert [r["label"] for r in a] == [r["label"] for r in b]
    for p, q in zip(a, b, strict=True):
        assert p["probabilities"] == pytest.approx(q["probabilities"], abs=1e-4)
        assert p["familiarity"] == pytest.approx(q["familiarity"], abs=1e-3)
        assert p["needs_review"] == q["needs_review"]
    # Asked for a heatmap, the light service answers without one (the page then shows none).
    one = httpx.post(
        light.url + "/predict?heatmap=true", files={"file": ("c.png", cell_png())}, timeout=60
    )
    assert one.status_code == 200 and one.json().get("heatmap") is None


def test_a_field_and_a_slide_get_the_same_cells(servers: tuple[LiveServer, LiveServer]) -> None:
    light, reference = servers
    image, _, _ = make_smear(seed=4)
    data = encode(Image.fromarray(image))
    for scale in ("0.19", None):
        params = {"microns_per_pixel": scale} if scale else {}
        ours, theirs = (
            httpx.post(
                server.url + "/analyze/smear",
                params=params,
                files={"file": ("f.png", data, "image/png")},
                timeout=120,
            )
            for server in (light, reference)
        )
        assert ours.status_code == theirs.status_code == 200, ours.text
        a, b = ours.json(), theirs.json()
        assert a["counts"] == b["counts"]
        assert a["cells_counted"] == b["cells_counted"] > 0
        assert a["scale"]["microns_per_pixel"] == pytest.approx(
            b["scale"]["microns_per_pixel"], rel=1e-3
        )
    # Slides on the light install: a field added, its cells stored, as the reference's.
    counts = []
    for server in (light, reference):
        with httpx.Client(base_url=server.url, timeout=120) as client:
            slide = client.post("/slides", json={"sample_id": "LIGHT-1", "microns_per_pixel": 0.19})
            assert slide.status_code == 201, slide.text
            slide_id = slide.json()["id"]
            added = client.post(
                f"/slides/{slide_id}/fields", files={"file": ("f.png", data, "image/png")}
            )
            assert added.status_code == 201, added.text
            counts.append(client.get(f"/slides/{slide_id}").json()["counts"])
    assert counts[0] == counts[1]


def test_the_training_commands_say_what_to_install(tmp_path: Path) -> None:
    import subprocess

    blocked = "import runpy, sys\nsys.modules['torch'] = None\n"
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            blocked + "sys.argv = ['training', 'export-onnx', '--model', 'x']\n"
            "runpy.run_module('training', run_name='__main__', alter_sys=True)",
        ],
        cwd=ROOT,
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "scripts/install.sh --train" in result.stderr.decode()
