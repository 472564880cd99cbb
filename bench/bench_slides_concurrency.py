"""Two service instances on one PostgreSQL database, eight reviewers at once on one slide: is every
accepted change there afterwards, and did every stale one get 409? (issue #13)

    .venv/bin/python bench/bench_slides_concurrency.py [--rounds 40] \\
        [--admin-url postgresql+psycopg://postgres@127.0.0.1:5432/test]

Makes a fresh database on the server (dropped at the end), eight reviewer users, and starts two
real servers (`python -m app`, the shipped models) on it. One slide gets two Chula fields. Then
eight threads, one per reviewer, each send --rounds reviews to cells picked at random from a
small shared pool (so they collide), alternating between the two instances, each with the cell's
version as that reviewer last read it; a 409 makes the reviewer read the cells again. At the end
the slide's cells and audit trail are read back and checked: every cell's final label is the one
of its accepted review with the highest version, the audit trail holds exactly one entry per
accepted review, and no accepted review is missing. Prints the counts, PATCH latency and the
verdict, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
from sqlalchemy import create_engine, make_url, text

from bench.bench_service import ROOT, free_port, start_server
from records.store import create_user, open_store

CHULA = ROOT.parent / "shared" / "datasets" / "chula-rbc-12" / "Dataset"
REVIEWERS = 8
POOL = 12  # cells the reviewers share: small, so that they collide


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=40, help="reviews per reviewer")
    ap.add_argument("--admin-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    args = ap.parse_args()
    admin = create_engine(make_url(args.admin_url), isolation_level="AUTOCOMMIT")
    name = f"rbc_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(args.admin_url).set(database=name).render_as_string(hide_password=False)
    servers: list[Any] = []
    try:
        with open_store(url) as store:
            store.upgrade()
            tokens = [create_user(store, f"tech{i}", "reviewer")[1] for i in range(REVIEWERS)]
        ports = [free_port(), free_port()]
        overrides: dict[str, str | None] = {"RBC_DATABASE_URL": url, "RBC_DEVICE": "cpu"}
        for port in ports:
            process, _ = start_server(
                ROOT / "models" / "default", port, 1, sys.executable, env_overrides=overrides
            )
            servers.append(process)
        report = run(args.rounds, [f"http://127.0.0.1:{p}" for p in ports], tokens)
    finally:
        for process in servers:
            process.terminate()
            process.wait(timeout=30)
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    print(
        f"{REVIEWERS} reviewers x {args.rounds} reviews on {POOL} shared cells, 2 instances: "
        f"{report['accepted']} accepted, {report['conflicts']} got 409, "
        f"{report['other_errors']} other errors; PATCH p50 {report['patch_ms_p50']:.0f} ms, "
        f"p95 {report['patch_ms_p95']:.0f} ms; {report['reviews_per_s']:.1f} reviews/s"
    )
    print(f"every accepted change kept, one audit entry each: {report['verdict']}")
    print(json.dumps(report))


def run(rounds: int, bases: list[str], tokens: list[str]) -> dict[str, Any]:
    auth = {"Authorization": f"Bearer {tokens[0]}"}
    with httpx.Client(timeout=120) as c:
        slide = c.post(
            f"{bases[0]}/slides",
            json={"sample_id": "bench", "microns_per_pixel": 0.19},
            headers=auth,
        ).json()
        sid = slide["id"]
        for path in sorted(CHULA.glob("*.jpg"))[:2]:
            c.post(
                f"{bases[1]}/slides/{sid}/fields",
                files={"file": (path.name, path.read_bytes())},
                headers=auth,
            ).raise_for_status()
        classes = c.get(f"{bases[0]}/slides/{sid}", headers=auth).json()["classes"]
        items = c.get(f"{bases[0]}/slides/{sid}/cells?limit=200", headers=auth).json()["items"]
    pool_ids = [cell["id"] for cell in items[:POOL]]
    accepted: list[tuple[int, int, str]] = []  # cell, new version, label
    conflicts = [0]
    others: list[str] = []
    latencies: list[float] = []
    lock = threading.Lock()

    def reviewer(i: int) -> None:
        rng = random.Random(i)
        headers = {"Authorization": f"Bearer {tokens[i]}"}
        with httpx.Client(timeout=120) as client:

            def read() -> dict[int, int]:
                page = client.get(
                    f"{bases[i % 2]}/slides/{sid}/cells?limit=200", headers=headers
                ).json()["items"]
                return {cell["id"]: cell["version"] for cell in page}

            versions = read()
            for r in range(rounds):
                cell = rng.choice(pool_ids)
                label = rng.choice(classes)
                started = time.perf_counter()
                answer = client.patch(
                    f"{bases[(i + r) % 2]}/slides/{sid}/cells/{cell}",
                    json={"label": label, "version": versions[cell]},
                    headers=headers,
                )
                with lock:
                    latencies.append((time.perf_counter() - started) * 1000)
                    if answer.status_code == 200:
                        body = answer.json()
                        accepted.append((cell, body["version"], body["final_label"]))
                    elif answer.status_code == 409:
                        conflicts[0] += 1
                    else:
                        others.append(f"{answer.status_code} {answer.text[:80]}")
                if answer.status_code == 200:
                    versions[cell] = answer.json()["version"]
                else:
                    versions = read()

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=REVIEWERS) as pool:
        list(pool.map(reviewer, range(REVIEWERS)))
    wall = time.perf_counter() - started

    with httpx.Client(timeout=120) as c:
        final = {
            cell["id"]: cell
            for cell in c.get(f"{bases[1]}/slides/{sid}/cells?limit=200", headers=auth).json()[
                "items"
            ]
        }
        trail = c.get(f"{bases[0]}/slides/{sid}/audit", headers=auth).json()["items"]
    problems: list[str] = []
    for cell in pool_ids:
        mine = sorted((v, label) for c_id, v, label in accepted if c_id == cell)
        versions_seen = [v for v, _ in mine]
        if len(set(versions_seen)) != len(versions_seen):
            problems.append(f"cell {cell}: two reviews accepted at one version")
        if mine:
            if final[cell]["final_label"] != mine[-1][1] or final[cell]["version"] != mine[-1][0]:
                problems.append(f"cell {cell}: final state is not its last accepted review")
            if final[cell]["version"] != len(mine) + 1:
                problems.append(f"cell {cell}: version {final[cell]['version']}, {len(mine)} kept")
    reviews_in_trail = [e for e in trail if e["action"] in ("relabel", "confirm")]
    if len(reviews_in_trail) != len(accepted):
        problems.append(f"audit: {len(reviews_in_trail)} review entries, {len(accepted)} accepted")
    return {
        "reviewers": REVIEWERS,
        "rounds": rounds,
        "instances": 2,
        "shared_cells": POOL,
        "accepted": len(accepted),
        "conflicts": conflicts[0],
        "other_errors": len(others),
        "other_error_examples": others[:3],
        "patch_ms_p50": float(np.percentile(latencies, 50)),
        "patch_ms_p95": float(np.percentile(latencies, 95)),
        "reviews_per_s": len(latencies) / wall,
        "verdict": "PASS" if not problems and not others else "FAIL",
        "problems": problems[:10],
    }


if __name__ == "__main__":
    main()
