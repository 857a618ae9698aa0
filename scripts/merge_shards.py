"""Merge the run folders of a sharded job (``shard=i num_shards=N``) into one scored run folder.

python scripts/merge_shards.py outputs/m/b/lava-b128-*-shard*of4 --out outputs/m/b/lava-b128-merged
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval.records import RecordWriter, load_records  # noqa: E402
from eval.runner import finish_run  # noqa: E402
from lava.errors import UserError  # noqa: E402


def merge(shards: list[Path], out: Path) -> dict:
    """Concatenate the shards' records (each sample id once), then re-aggregate with the benchmark."""
    if not shards:
        raise UserError("give at least one shard folder")
    configs = [OmegaConf.load(s / "config.yaml") for s in shards]
    identity = {
        OmegaConf.to_yaml(OmegaConf.masked_copy(c, ["model", "method", "bench", "budget", "seed"]))
        for c in configs
    }
    if len(identity) != 1:
        raise UserError("the shards come from different configurations; merge only shards of one job")
    records: dict[str, dict] = {}
    for shard in shards:
        for record in load_records(shard / "predictions.jsonl", repair=False)[0]:
            records.setdefault(record["id"], record)
    out.mkdir(parents=True, exist_ok=True)
    merged_path = out / "predictions.jsonl"
    merged_path.unlink(missing_ok=True)
    with RecordWriter(merged_path) as writer:
        for record in records.values():
            writer.write(record)
    shutil.copy(shards[0] / "config.yaml", out / "config.yaml")
    if (shards[0] / "method.json").exists():
        shutil.copy(shards[0] / "method.json", out / "method.json")
    bench = instantiate(configs[0].bench, _convert_="all")
    rows = list(records.values())
    elapsed = 0.0
    for shard in shards:  # the shards ran one after another or side by side: report the sum
        meta = shard / "run_meta.json"
        if meta.exists():
            elapsed += json.loads(meta.read_text()).get("timings", {}).get("elapsed_seconds", 0.0)
    # Same files as a single run: scores.json, artifacts, kept_per_head.npy, run_meta.json.
    finish_run(out, configs[0], bench, rows, rows, elapsed, f"merged from {len(shards)} shards")
    return json.loads((out / "scores.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("shards", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    try:
        scores = merge(args.shards, args.out)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(f"merged {scores.get('num_samples')} samples into {args.out}: score {scores.get('score')}")


if __name__ == "__main__":
    main()
