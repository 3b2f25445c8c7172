"""A study's results as `results.json`, `results.csv`, `results.md` (tables laid out like the paper's, its VOC
numbers beside ours) and `results.png` (mIoU against k with the spread over seeds), from the runs' results."""

from __future__ import annotations

import csv
import os
import statistics

from gcn_jax.study.grid import PAPER_BR, PAPER_MIOU, Study, Variant
from gcn_jax.study.runner import write_json

CSV_FIELDS = ("variant", "kind", "k", "seed", "step", "miou", "pixel_accuracy", "mean_class_accuracy",
              "boundary_accuracy", "interior_accuracy", "params", "head_params", "res5_head_params", "train_seconds",
              "reused_from", "failed")
METRICS = ("miou", "boundary_accuracy", "interior_accuracy", "pixel_accuracy")
KIND_NAMES = {"base": "base (1x1)", "gcn": "GCN", "conv": "k x k conv", "stack": "3x3 stack", "gcn_br": "GCN + BR"}


def spread(values: list[float]) -> dict:
    """Mean, sample standard deviation (0 for one seed), min and max, in %."""
    values = [100 * v for v in values]
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def aggregate(variants: list[Variant], results: list[dict]) -> list[dict]:
    """One row per variant with any finished seed: the spread of each metric over its seeds."""
    rows = []
    for variant in variants:
        runs = sorted((r for r in results if r["variant"] == variant.name), key=lambda r: r["seed"])
        if not runs:
            continue
        row = {"variant": variant.name, "kind": variant.kind, "k": variant.k, "paper_miou": variant.paper(),
               "seeds": [r["seed"] for r in runs], "params": runs[0]["params"], "head_params": runs[0]["head_params"],
               "res5_head_params": runs[0]["res5_head_params"],
               "train_seconds": statistics.fmean(r["train_seconds"] for r in runs)}
        for metric in METRICS:
            values = [r[metric] for r in runs if r[metric] is not None]
            row[metric] = spread(values) if values else None
        row["miou_per_seed"] = [None if r["miou"] is None else 100 * r["miou"] for r in runs]
        rows.append(row)
    return rows


def _cell(stats: dict | None, seeds: int | None = None) -> str:
    """mean ± sd; (n=...) where fewer seeds than the study's went into it (others unfinished or diverged)."""
    if stats is None:
        return "—"
    text = f"{stats['mean']:.1f}" if stats["n"] == 1 else f"{stats['mean']:.1f} ± {stats['std']:.1f}"
    return text if seeds is None or stats["n"] == seeds else f"{text} (n={stats['n']})"


def _paper(value) -> str:
    return "—" if value is None else f"{value:.1f}"


def _row(rows: list[dict], kind: str, k) -> dict | None:
    return next((r for r in rows if r["kind"] == kind and r["k"] == k), None)


def markdown_tables(study: Study, rows: list[dict], seeds: int | None = None) -> list[str]:
    """The paper-shaped table of ``study``: for the k studies one row per k with each head's mIoU (mean ± sd over
    seeds) and the paper's; for `br` the boundary / interior accuracy and mIoU of each variant."""
    if study.name == "br":
        lines = ["| | boundary acc. | interior acc. | mIoU | paper: boundary / interior / mIoU |",
                 "|---|---|---|---|---|"]
        for r in rows:
            paper = PAPER_BR.get(r["kind"]) if r["k"] in (None, 15) else None
            label = KIND_NAMES[r["kind"]] + ("" if r["k"] is None else f" (k={r['k']})")
            lines.append(f"| {label} | "
                         f"{_cell(r['boundary_accuracy'], seeds)} | {_cell(r['interior_accuracy'], seeds)} | "
                         f"{_cell(r['miou'], seeds)} | "
                         f"{' / '.join(map(_paper, paper)) if paper else '—'} |")
        return lines
    kinds = [k for k in study.kinds if k != "base"]
    header = " | ".join(f"{KIND_NAMES[kind]} mIoU | paper" for kind in kinds)
    lines = [f"| k | {header} | " + " | ".join(f"{KIND_NAMES[kind]} params (res-5 head)" for kind in kinds) + " |",
             "|---|" + "---|" * (3 * len(kinds))]
    base = _row(rows, "base", None)
    if base is not None:
        cells = " | ".join([_cell(base["miou"], seeds), _paper(base["paper_miou"])] + ["", ""] * (len(kinds) - 1))
        lines.append(f"| base (1x1) | {cells} | {base['res5_head_params']:,} |" + " |" * (len(kinds) - 1))
    for k in sorted({r["k"] for r in rows if r["k"] is not None}):
        found = [_row(rows, kind, k) for kind in kinds]
        cells = [c for kind, r in zip(kinds, found)
                 for c in (_cell(r and r["miou"], seeds), _paper(PAPER_MIOU.get(kind, {}).get(k)))]
        params = [f"{r['res5_head_params']:,}" if r else "—" for r in found]
        lines.append(f"| {k} | " + " | ".join(cells + params) + " |")
    return lines


def detail_table(rows: list[dict]) -> list[str]:
    lines = ["| variant | seeds | mIoU per seed | mIoU mean ± sd (min–max) | boundary acc. | interior acc. | "
             "params | train time / run |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        m = r["miou"]
        per_seed = ", ".join("—" if v is None else f"{v:.1f}" for v in r["miou_per_seed"])
        summary = "—" if m is None else f"{m['mean']:.2f} ± {m['std']:.2f} ({m['min']:.1f}–{m['max']:.1f})"
        lines.append(f"| {r['variant']} | {len(r['seeds'])} | {per_seed} | {summary} | "
                     f"{_cell(r['boundary_accuracy'])} | {_cell(r['interior_accuracy'])} | {r['params']:,} | "
                     f"{r['train_seconds'] / 60:.1f} min |")
    return lines


def write_report(workdir: str, study: Study, variants: list[Variant], results: list[dict], missing: list[str],
                 about: dict) -> list[str]:
    """results.json, results.csv, results.md and results.png in ``workdir``; the paths written."""
    rows = aggregate(variants, results)
    paths = [os.path.join(workdir, f"results.{ext}") for ext in ("json", "csv", "md", "png")]
    write_json(paths[0], {"study": study.name, "table": study.table, **about, "variants": rows, "runs": results,
                          "missing": missing})
    with open(paths[1], "w", newline="") as f:
        writer = csv.DictWriter(f, CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(sorted(results, key=lambda r: ([v.name for v in variants].index(r["variant"]), r["seed"])))
    total = sum(r["train_seconds"] for r in results if not r.get("reused_from"))
    reused = sum(1 for r in results if r.get("reused_from"))
    text = [f"# Study `{study.name}` (the paper's {study.table}): {study.description}", "",
            f"Config `{about['config']}`, {about['num_train_steps']:,} steps per run, seeds {about['seeds']}; "
            f"{len(results)} runs finished ({reused} of them taken over from another study with --reuse), "
            f"{total / 60:.0f} min of training in this study. mIoU and accuracies in %, "
            "mean ± sample standard deviation over seeds; the paper's figures are PASCAL VOC 2012 val, for "
            "reference only.", "", *markdown_tables(study, rows, len(about["seeds"])), "", *detail_table(rows), ""]
    failed = [f"{r['variant']}/seed{r['seed']}" for r in results if r.get("failed")]
    if failed:
        text += [f"Stopped on a non-finite loss (no mIoU, left out of the means): {', '.join(failed)}. Delete "
                 "a run's study_result.json to train it again.", ""]
    if missing:
        text += [f"Not finished: {', '.join(missing)}.", ""]
    text += [f"![{study.name}](results.png)", ""]
    with open(paths[2], "w") as f:
        f.write("\n".join(text))
    plot(paths[3], study, rows)
    return paths


def plot(path: str, study: Study, rows: list[dict]) -> None:
    """mIoU against k for each head with the seeds' min-max as error bars and each seed as a dot; the base as a
    horizontal band. For `br`, the three metrics side by side for each variant."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.2), dpi=120)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    if study.name == "br":
        _bars(ax, rows)
    else:
        for i, kind in enumerate(k for k in study.kinds if k != "base"):
            found = sorted((r for r in rows if r["kind"] == kind and r["miou"]), key=lambda r: r["k"])
            if not found:
                continue
            ks = [r["k"] for r in found]
            means = [r["miou"]["mean"] for r in found]
            errors = [[r["miou"]["mean"] - r["miou"]["min"] for r in found],
                      [r["miou"]["max"] - r["miou"]["mean"] for r in found]]
            ax.errorbar(ks, means, yerr=errors, marker="o", capsize=3, label=KIND_NAMES[kind], color=f"C{i}")
            for r in found:
                per_seed = [v for v in r["miou_per_seed"] if v is not None]
                ax.scatter([r["k"]] * len(per_seed), per_seed, s=8, color=f"C{i}", alpha=0.5)
        base = _row(rows, "base", None)
        if base is not None and base["miou"]:
            ax.axhline(base["miou"]["mean"], color="gray", linestyle="--", label="base (1x1)")
            ax.axhspan(base["miou"]["min"], base["miou"]["max"], color="gray", alpha=0.15)
        ax.set_xticks(sorted({r["k"] for r in rows if r["k"] is not None}))
        ax.set_xlabel("kernel size k")
        ax.set_ylabel("mIoU (%)")
    ax.set_title(f"{study.name} ({study.table}): mean, min–max over seeds")
    ax.grid(alpha=0.3)
    ax.legend()
    figure.savefig(path)


def _bars(ax, rows: list[dict]) -> None:
    """Table 5 as bars: boundary accuracy, interior accuracy and mIoU, one colour per variant, min-max over
    seeds; the axis starts near the lowest value, as the differences are a few points."""
    names, kinds = ("boundary_accuracy", "interior_accuracy", "miou"), ("base", "gcn", "gcn_br")
    lows = []
    for i, kind in enumerate(kinds):
        r = next((r for r in rows if r["kind"] == kind), None)
        label = KIND_NAMES[kind]
        for j, name in enumerate(names):
            s = r and r[name]
            if s:
                ax.bar(j + (i - 1) * 0.27, s["mean"], 0.25, yerr=[[s["mean"] - s["min"]], [s["max"] - s["mean"]]],
                       label=label, color=f"C{i}", capsize=3)
                label, lows = None, lows + [s["min"]]
    ax.set_xticks(range(3), ["boundary acc.", "interior acc.", "mIoU"])
    ax.set_ylabel("%")
    if lows:
        ax.set_ylim(max(0.0, min(lows) - 5), 100)
