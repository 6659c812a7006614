"""Zip compression of a checkpoint: save time and size per level, and the default it leads to.

For the small policy (``[64, 64]``) and the ~50 MB one (``[1024, 1024, 1024]``, as in
``bench/save_overhead.py``), one ``DynamicCheckpointManager`` per setting of
``performance.compression``: ``stored`` (ZIP_STORED, "level 0") and ``deflate`` at levels
1, 6 and 9 (ZIP_DEFLATED). The saves are interleaved (one of each setting per round, the model
trained a little between rounds) and each time is the best over the rounds (other load on
the machine only ever adds time):

- blocked: the time ``manager.save()`` takes to return on the training thread (async);
- total: from the ``save()`` call until the checkpoint is committed (zip, pkl and metadata
  written and fsynced), with the training thread waiting: the writer's whole cost;
- zip MB, and the size relative to stored.

From those figures it prints the default it picks for ``performance.compression``::

    .venv/bin/python bench/compression.py [--saves 3] [--quick] [--dir /tmp] [--json PATH]

Runs in about a minute on 2 cores (``--quick``: 2 saves per setting).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._report import Figure, add_json_argument, write_figures  # noqa: E402
from bench.save_overhead import BIG, SMALL, _train, bench_manager, make_model  # noqa: E402
from checkpointing.config import CheckpointConfig  # noqa: E402

POLICIES = [("small", SMALL), ("50 MB", BIG)]
# (label, performance.compression, compression_level)
SETTINGS = [
    ("stored (level 0)", "stored", 1),
    ("deflate level 1", "deflate", 1),
    ("deflate level 6", "deflate", 6),
    ("deflate level 9", "deflate", 9),
]


def measure(policy: str, net_arch: list[int], saves: int, work: Path) -> list[dict[str, Any]]:
    """One row per setting: the best of ``saves`` saves (after one warm-up round)."""
    model = make_model(net_arch)
    venv = model.get_vec_normalize_env()
    _train(model)  # optimizer state exists, as in a real save
    managers = [
        bench_manager(work / f"{policy.split()[0]}-{i}", mode, level)
        for i, (_, mode, level) in enumerate(SETTINGS)
    ]
    times: list[dict[str, list[float]]] = [{"blocked": [], "total": []} for _ in SETTINGS]
    sizes = [0] * len(SETTINGS)
    try:
        for round_ in range(saves + 1):  # round 0 warms up and is not counted
            order = list(range(len(SETTINGS)))
            if round_ % 2:
                order.reverse()  # alternate the order, so no setting always goes first
            for i in order:
                started = time.perf_counter()
                future = managers[i].save(model, venv, "periodic", metrics={"val_reward": 0.0})
                returned = time.perf_counter()
                outcome = future.result()
                committed = time.perf_counter()
                if not outcome.ok:
                    raise SystemExit(f"save failed: {outcome}")
                sizes[i] = outcome.paths[0].stat().st_size
                if round_ > 0:
                    times[i]["blocked"].append(returned - started)
                    times[i]["total"].append(committed - started)
            _train(model)
    finally:
        for manager in managers:
            manager.close()
    return [
        {
            "policy": policy,
            "label": label,
            "mode": mode,
            "level": level,
            "blocked": min(times[i]["blocked"]),
            "total": min(times[i]["total"]),
            "zip_bytes": sizes[i],
        }
        for i, (label, mode, level) in enumerate(SETTINGS)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--saves", type=int, default=3, help="measured saves per setting")
    parser.add_argument("--quick", action="store_true", help="2 saves per setting")
    parser.add_argument("--dir", default=None, help="where to write (default: a temp folder)")
    add_json_argument(parser)
    args = parser.parse_args(argv)
    saves = min(args.saves, 2) if args.quick else max(1, args.saves)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)  # as in a 1-CPU trial

    work = Path(tempfile.mkdtemp(prefix="bench-compression-", dir=args.dir))
    try:
        rows = {name: measure(name, arch, saves, work) for name, arch in POLICIES}
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"zip compression per setting: best of {saves} interleaved saves, torch threads 1")
    head = (
        f"{'policy':<7} {'setting':<17} {'zip MB':>8} {'vs stored':>9} | "
        f"{'blocked ms':>10} {'total ms':>9} {'total vs stored':>15}"
    )
    print(head)
    print("-" * len(head))
    for name, _ in POLICIES:
        stored = rows[name][0]
        for r in rows[name]:
            print(
                f"{name:<7} {r['label']:<17} {r['zip_bytes'] / 1e6:>8.3f} "
                f"{r['zip_bytes'] / stored['zip_bytes']:>9.3f} | {r['blocked'] * 1e3:>10.1f} "
                f"{r['total'] * 1e3:>9.1f} {r['total'] / stored['total']:>14.1f}x"
            )
    print(
        "blocked = manager.save() returning on the training thread (the writer is async); "
        "total = until the commit (zip + pkl + metadata written and fsynced)"
    )

    # The pick: the deflate level to use when bytes matter is the lowest (zlib's cheapest) one
    # whose zip is within half a percentage point of the smallest; whether to deflate at all
    # weighs its saving against its cost on the 50 MB policy.
    big = rows["50 MB"]
    stored, deflates = big[0], big[1:]
    smallest = min(r["zip_bytes"] for r in deflates)
    good = [r for r in deflates if r["zip_bytes"] <= smallest + 0.005 * stored["zip_bytes"]]
    level = min(good, key=lambda r: r["level"])
    saving = 1 - level["zip_bytes"] / stored["zip_bytes"]
    cost = level["total"] / stored["total"]
    print(
        f"\n50 MB policy: {level['label']} saves {saving:.1%} of the zip for {cost:.1f}x the "
        f"writer's time ({level['total'] * 1e3:.0f} ms vs {stored['total'] * 1e3:.0f} ms per save)"
    )
    for r in deflates:
        if r is not level:
            print(
                f"  {r['label']}: {1 - r['zip_bytes'] / stored['zip_bytes']:.1%} smaller than "
                f"stored, {r['total'] / level['total']:.1f}x the time of {level['label']}"
            )
    below = CheckpointConfig().performance.compress_below_free_gb
    print(
        "default picked: compression: adaptive, compression_level: "
        f"{level['level']}: stored while the disk has compress_below_free_gb ({below:g} GB) free, "
        f"deflate level {level['level']} below it, where {saving:.0%} of every zip is worth "
        "the writer's time"
    )
    figures = [
        Figure(
            "compression",
            f"50 MB zip: {level['label']} vs stored (size, writer time)",
            "",
            f"{level['zip_bytes'] / 1e6:.1f} vs {stored['zip_bytes'] / 1e6:.1f} MB "
            f"(-{saving:.1%}), {level['total'] * 1e3:.0f} vs {stored['total'] * 1e3:.0f} ms",
        ),
        Figure(
            "compression",
            "50 MB zip: deflate level 9 vs stored",
            "",
            f"-{1 - big[-1]['zip_bytes'] / stored['zip_bytes']:.1%} size, "
            f"{big[-1]['total'] / stored['total']:.0f}x writer time",
        ),
        Figure(
            "compression",
            "default picked from these figures",
            "",
            f"adaptive: stored, deflate {level['level']} when the disk is short",
        ),
    ]
    write_figures(args.json, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
