"""The studies: named grids of config overrides, one per ablation table of the paper, with its VOC numbers.

A variant is one model of a table (the 1x1 base, GCN with k = 7, the trivial 7x7 conv, ...): a name, the config
overrides that make it, and where it sits in the table (`kind`, `k`). Tables 1-3 are without Boundary
Refinement, so their variants switch BR off whatever the study's config says; Table 5 compares base, GCN and
GCN + BR at the config's kernel size (the paper's k = 15).
"""

from __future__ import annotations

import dataclasses

from gcn_jax.errors import InputError

# PASCAL VOC 2012 val mIoU (%) of the paper's tables (../shared/PAPER.md), shown beside ours for reference.
PAPER_BASE_MIOU = 69.0
PAPER_MIOU = {
    "gcn": {3: 70.1, 5: 71.1, 7: 72.8, 9: 73.4, 11: 73.7, 13: 74.0, 15: 74.5},  # Tables 1-3
    "conv": {3: 69.8, 5: 70.4, 7: 69.6, 9: 68.8},  # Table 2
    "stack": {3: 69.8, 5: 71.8, 7: 71.3, 9: 69.5, 11: 67.5},  # Table 3
}
# Table 5: boundary accuracy, interior accuracy, mIoU (%); GCN at k = 15.
PAPER_BR = {"base": (71.3, 93.9, 69.0), "gcn": (71.5, 95.0, 74.5), "gcn_br": (73.4, 95.1, 74.7)}


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str  # also its sub-workdir
    kind: str  # base | gcn | conv | stack | gcn_br
    k: int | None  # the head's kernel size; None for the 1x1 base
    overrides: tuple[tuple[str, object], ...]  # (dotted config key, value)

    def paper(self) -> float | None:
        """The paper's VOC mIoU for this variant, where a table has it."""
        if self.kind == "base":
            return PAPER_BASE_MIOU
        if self.kind == "gcn_br":
            return PAPER_BR["gcn_br"][2] if self.k == 15 else None
        return PAPER_MIOU.get(self.kind, {}).get(self.k)


@dataclasses.dataclass(frozen=True)
class Study:
    name: str
    table: str  # the paper's table(s) it reproduces
    description: str
    default_kernel_sizes: tuple[int, ...]  # () for a study at the config's kernel size
    kinds: tuple[str, ...]  # the heads compared at each k

    def variants(self, kernel_sizes: tuple[int, ...] = (), config_kernel_size: int = 15) -> list[Variant]:
        """The grid: the 1x1 base (where the table has one), then each kind at each k."""
        if self.name == "br":
            if kernel_sizes:
                raise InputError("--kernel_sizes: the br study compares base, GCN and GCN + BR at one k, the "
                                 "config's: pass --config.model.kernel_size=K instead")
            k = config_kernel_size
            return [_variant("base", None, use_br=False), _variant("gcn", k, use_br=False),
                    _variant("gcn_br", k, use_br=True)]
        ks = tuple(kernel_sizes) or self.default_kernel_sizes
        bad = [k for k in ks if k < 1 or k % 2 == 0]
        if bad or len(set(ks)) != len(ks):
            raise InputError(f"--kernel_sizes {','.join(map(str, ks))}: expected distinct odd sizes >= 1 (the paper "
                             "uses odd k only)")
        base = [_variant("base", None, use_br=False)] if "base" in self.kinds else []
        return base + [_variant(kind, k, use_br=False) for k in sorted(ks) for kind in self.kinds if kind != "base"]


def _variant(kind: str, k: int | None, *, use_br: bool) -> Variant:
    head = "gcn" if kind == "gcn_br" else kind
    overrides = [("model.head", head), ("model.use_br", use_br), ("model.stage_kernel_sizes", ())]
    name = kind
    if k is not None:
        overrides.append(("model.kernel_size", k))
        name = f"{kind}_k{k}"
    return Variant(name, kind, k, tuple(overrides))


STUDIES = {s.name: s for s in (
    Study("kernel_size", "Table 1", "mIoU against the GCN kernel size k; the 1x1 base; BR off",
          (3, 7, 11, 15), ("base", "gcn")),
    Study("gcn_vs_conv", "Table 2", "GCN against a trivial k x k convolution at each k; BR off",
          (3, 5, 7, 9), ("gcn", "conv")),
    Study("gcn_vs_stack", "Table 3", "GCN against a stack of 3x3 convolutions of the same receptive field; BR off",
          (3, 5, 7, 9, 11), ("gcn", "stack")),
    Study("br", "Table 5", "base, GCN and GCN + Boundary Refinement at the config's k: boundary and interior "
          "accuracy, mIoU", (), ("base", "gcn", "gcn_br")),
)}


def get_study(name: str) -> Study:
    if name not in STUDIES:
        raise InputError(f"--study={name}: expected one of {', '.join(STUDIES)}")
    return STUDIES[name]


def variant_config(config, variant: Variant, seed: int):
    """A copy of ``config`` with ``variant``'s overrides, and seed ``seed`` (0, 1, ...) added to both the
    initialisation seed and the data seed (shuffling and augmentation), so seeds differ in both."""
    config = config.copy_and_resolve_references()
    with config.unlocked():
        for key, value in variant.overrides:
            section, field = key.split(".")
            config[section][field] = value
        config.seed = config.seed + seed
        config.data.seed = config.data.seed + seed
    return config
