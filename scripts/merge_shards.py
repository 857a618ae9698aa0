"""Merge the run folders of a sharded job (``shard=i num_shards=N``) into one scored run folder.

    python scripts/merge_shards.py outputs/m/b/lava-b128-*-shard*of4 --out outputs/m/b/lava-b128-merged
    python scripts/merge_shards.py --root outputs/reproduce     # every sharded run under a root

A merge refuses an incomplete set: a shard folder missing, or a shard lacking some of its samples
(a job that timed out), with a one-line error naming the missing shards or sample ids. The merged
folder holds the files of an unsharded run; with ``--root`` it is the unsharded run's own folder
(the shard suffix dropped), so the report step finds it like any other run.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from collections import defaultdict
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval.records import RecordWriter, load_records  # noqa: E402
from eval.run_folder import finish_run  # noqa: E402
from eval.sample_loop import load_samples  # noqa: E402
from lava.errors import UserError  # noqa: E402
from lava.models import as_spec, load_tokenizer  # noqa: E402

SHARD_SUFFIX = re.compile(r"-shard(?P<shard>\d+)of(?P<of>\d+)$")
IDENTITY = ["model", "method", "bench", "budget", "seed", "limit", "num_shards"]


def _shown(items: list, most: int = 8) -> str:
    head = ", ".join(str(i) for i in items[:most])
    return head + (f" and {len(items) - most} more" if len(items) > most else "")


def expected_ids(cfg: DictConfig) -> list[str]:
    """The sample ids shard ``cfg.shard`` of ``cfg.num_shards`` must hold (its ``limit`` applied)."""
    bench = instantiate(cfg.bench, _convert_="all")
    spec = as_spec(cfg.model)
    return [s.id for s in load_samples(cfg, bench, load_tokenizer(spec), spec)]


def check_complete(shards: list[Path], configs: list[DictConfig]) -> dict[int, list[str]]:
    """One-line UserError unless ``shards`` are every shard of one job, each with all its samples.

    Returns each shard's sample ids (shard index -> ids in sample order)."""
    identity = {OmegaConf.to_yaml(OmegaConf.masked_copy(c, IDENTITY)) for c in configs}
    if len(identity) != 1:
        raise UserError("the shards come from different configurations; merge only shards of one job")
    total = int(configs[0].get("num_shards", 1))
    present = sorted({int(c.get("shard", 0)) for c in configs})
    missing = sorted(set(range(total)) - set(present))
    name = SHARD_SUFFIX.sub("", shards[0].name)
    if missing:
        raise UserError(
            f"incomplete shards of {name}: missing shard(s) {_shown(missing)} of {total} "
            f"(have {_shown(present)}); run them (shard=<i> num_shards={total}) before merging"
        )
    lacking, expected = [], {}
    for shard, cfg in zip(shards, configs):
        path = shard / "predictions.jsonl"
        have = {r["id"] for r in load_records(path, repair=False)[0]} if path.exists() else set()
        expected[int(cfg.shard)] = expected_ids(cfg)
        lacking += [i for i in expected[int(cfg.shard)] if i not in have]
    if lacking:
        raise UserError(
            f"incomplete shards of {name}: {len(lacking)} sample(s) missing ({_shown(lacking)}); "
            "rerun the shard jobs (they resume) before merging"
        )
    return expected


def merge(shards: list[Path], out: Path) -> dict:
    """Check the set is complete, then write the records in the unsharded sample order and score them."""
    if not shards:
        raise UserError("give at least one shard folder")
    for shard in shards:
        if not (shard / "config.yaml").is_file():
            raise UserError(f"{shard} is not a run folder (no config.yaml)")
    configs = [OmegaConf.load(s / "config.yaml") for s in shards]
    expected = check_complete(shards, configs)
    unsharded = configs[0].copy()
    with open_dict(unsharded):
        unsharded.shard, unsharded.num_shards = 0, 1
    records: dict[str, dict] = {}
    for shard in shards:
        for record in load_records(shard / "predictions.jsonl", repair=False)[0]:
            records.setdefault(record["id"], record)
    # The order of an unsharded run (sample order), so aggregation and artifacts match it exactly.
    ids_in_order = _interleave([expected[k] for k in sorted(expected)])
    rows = [records[i] for i in ids_in_order]
    out.mkdir(parents=True, exist_ok=True)
    merged_path = out / "predictions.jsonl"
    merged_path.unlink(missing_ok=True)
    with RecordWriter(merged_path) as writer:
        for record in rows:
            writer.write(record)
    OmegaConf.save(unsharded, out / "config.yaml", resolve=True)
    if (shards[0] / "method.json").exists():
        shutil.copy(shards[0] / "method.json", out / "method.json")
    bench = instantiate(configs[0].bench, _convert_="all")
    elapsed = 0.0
    for shard in shards:  # the shards ran one after another or side by side: report the sum
        meta = shard / "run_meta.json"
        if meta.exists():
            elapsed += json.loads(meta.read_text()).get("timings", {}).get("elapsed_seconds", 0.0)
    # Same files as a single run: scores.json, artifacts, kept_per_head.npy, run_meta.json.
    finish_run(out, unsharded, bench, rows, rows, elapsed, f"merged from {len(shards)} shards")
    return json.loads((out / "scores.json").read_text())


def _interleave(per_shard: list[list[str]]) -> list[str]:
    """Shard i holds samples i, i+N, ...: undo that split (the inverse of ``samples[i::N]``)."""
    out = []
    for k in range(max((len(ids) for ids in per_shard), default=0)):
        out += [ids[k] for ids in per_shard if k < len(ids)]
    return out


def sharded_groups(root: Path) -> dict[Path, list[Path]]:
    """Shard folders under ``root`` grouped by the unsharded run folder they merge into."""
    groups: dict[Path, list[Path]] = defaultdict(list)
    for config in sorted(Path(root).rglob("config.yaml")):
        folder = config.parent
        if SHARD_SUFFIX.search(folder.name):
            groups[folder.with_name(SHARD_SUFFIX.sub("", folder.name))].append(folder)
    return dict(groups)


def merge_root(root: Path) -> list[Path]:
    """Merge every sharded run under ``root`` into its unsharded folder; all checked before any write."""
    groups = sharded_groups(root)
    for shards in groups.values():
        check_complete(shards, [OmegaConf.load(s / "config.yaml") for s in shards])
    for out, shards in groups.items():
        merge(shards, out)
    return list(groups)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("shards", nargs="*", type=Path)
    parser.add_argument("--out", type=Path, help="merged run folder (with shard folders)")
    parser.add_argument("--root", type=Path, help="merge every sharded run under this output root")
    args = parser.parse_args()
    try:
        if args.root is not None:
            if args.shards or args.out:
                raise UserError("give either --root or shard folders with --out, not both")
            for folder in merge_root(args.root):
                print(f"merged {folder}")
            return
        if args.out is None:
            raise UserError("give --out <merged folder> with the shard folders (or --root <output root>)")
        scores = merge(args.shards, args.out)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(f"merged {scores.get('num_samples')} samples into {args.out}: score {scores.get('score')}")


if __name__ == "__main__":
    main()
