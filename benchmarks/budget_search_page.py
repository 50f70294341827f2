"""A budget build's search, as a results page: the candidates the search judged (Linear parameters, the
measured value, met or not), the plan it chose, the refit's gain (``--sequential-refit``), the chosen
file's quality on the --eval data, stage times and the machine load. Reads the build.json of a finished
``edgecompress build`` (run it first, then this on its folder).

    HF_HUB_OFFLINE=1 python -m edgecompress build MODEL --policy energy --whiten --min-cosine 0.95 \\
        --eval-split dev.txt --calib train.txt --calib-samples 512 --round-to 8 --sequential-refit \\
        --eval test.txt --out OUT
    python benchmarks/budget_search_page.py OUT/build.json --command "..." --load "..." \\
        --out benchmarks/results/minilm-refit-search_cpu-2core
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def summary(record: dict[str, Any], command: str, load: str) -> dict[str, Any]:
    """The facts the page shows, from a build.json record with a budget search."""
    search = record["search"]
    totals = record["totals"]
    agreement = {row["inputs"]: row for row in record["artifacts"]["compressed"].get("agreement") or []}
    return {"command": command, "load": load, "git_commit": record["provenance"].get("git_commit"),
            "budget": search["budget"], "allocation": search["allocation"], "candidates": search["candidates"],
            "table_cache": (search.get("table_cache") or {}).get("status"),
            "path": [{k: step.get(k) for k in ("candidate", "linear_params", "value", "cosine_p5", "meets")}
                     for step in search["path"]],
            "linear_params": [totals["linear_params_before"], totals["linear_params_after"]],
            "refit": {k: search["refit"].get(k) for k in ("in_search", "validation_cosine", "samples")}
            if "refit" in search else None,
            "eval": agreement.get("eval"), "timings_s": record.get("timings_s")}


def markdown(page: dict[str, Any]) -> str:
    before, after = page["linear_params"]
    lines = [f"# Budget search: {json.dumps(page['budget'])}", "",
             f"Command: `{page['command']}`; git {page['git_commit']}; load: {page['load']}.", "",
             f"Result: {before:,} → {after:,} Linear parameters (**{before / after:.2f}x**), allocation "
             f"{page['allocation']}, {len(page['path'])} of {page['candidates']} candidates judged (sensitivity "
             f"table: {page['table_cache']})."]
    if page["eval"]:
        lines.append(f"The chosen file vs the dense model on the --eval data ({page['eval']['samples']} samples): "
                     f"cosine mean **{page['eval']['cosine_mean']:.4f}**, p5 {page['eval']['cosine_p5']:.4f}.")
    if page["refit"]:
        gain = page["refit"]["validation_cosine"] or {}
        lines.append(f"Refit judged in the search: {page['refit']['in_search']}; the chosen plan on the split the "
                     f"search measures: {gain.get('before')} before its refit, {gain.get('after')} after.")
    lines += ["", "| candidate | Linear params | ratio | value | p5 | meets |", "|---:|---:|---:|---:|---:|---|"]
    lines += [f"| {s['candidate']} | {s['linear_params']:,} | {before / s['linear_params']:.2f}x | {s['value']} | "
              f"{s.get('cosine_p5') or ''} | {'yes' if s['meets'] else 'no'} |" for s in page["path"]]
    lines += ["", "Stage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in (page["timings_s"] or {}).items())]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("build_json", type=Path)
    parser.add_argument("--command", required=True, help="the build command that wrote it")
    parser.add_argument("--load", required=True, help="the machine load during the build (uptime)")
    parser.add_argument("--out", required=True, help="write OUT.json and OUT.md")
    args = parser.parse_args()
    page = summary(json.loads(args.build_json.read_text()), args.command, args.load)
    Path(args.out + ".json").write_text(json.dumps(page, indent=2) + "\n")
    Path(args.out + ".md").write_text(markdown(page))
    print(markdown(page))


if __name__ == "__main__":
    main()
