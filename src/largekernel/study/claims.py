"""The seed papers' claims, each judged on the study's numbers: confirmed, refuted or inconclusive.

Pure functions of the aggregated table (no I/O, no training), so the verdicts
are reproducible from ``results.json`` and tested on fixed inputs.

Statistics. A model's accuracy is the mean over seeds; its standard error is
the larger of the seed-to-seed one (sample std / sqrt(seeds)) and the
binomial error of an accuracy measured on ``N`` test samples,
sqrt(p (1 - p) / N): seeds that agree to the sample do not make a difference
certain. A difference of means is *significant* when it exceeds two standard
errors of the difference, sqrt(se_a^2 + se_b^2). "A beats B": confirmed when
A - B is significantly positive, refuted when significantly negative.
"A matches B": confirmed when A's mean is at most one point below B's, refuted
when it is more than one point below with two standard errors to spare
(A - B + 2 se < -1), inconclusive in between. Per-seed thresholds (throughput
ratios, kernel extents): confirmed when every seed passes, refuted when every
seed fails, inconclusive otherwise.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

__all__ = ["CONFIRMED", "REFUTED", "INCONCLUSIVE", "Z", "MARGIN", "standard_error", "beats", "matches",
           "every_seed", "combine", "judge_claims", "format_claims"]

CONFIRMED, REFUTED, INCONCLUSIVE = "confirmed", "refuted", "inconclusive"
Z = 2.0  # standard errors a difference must exceed
MARGIN = 1.0  # accuracy points within which "matches" / "the same accuracy" holds
LOCALISED = 0.25  # "well localised": 90 % of |kernel| mass within this share of the input's extent
DIFFERENT = 1.5  # "different extents per layer": largest layer extent / smallest at least this
LITTLE_COST = 0.8  # "little throughput cost": at least this share of the dense model's throughput
AGREEMENT = 0.99  # "the same accuracy" of two paths on the same weights: this share of predictions agree

_DCLS = "DCLS (Khalfaoui-Hassani et al., ICLR 2023)"
_NIFF = "NIFF (Grabinski et al., TMLR 2024)"
_FLEX = "FlexConv (Romero et al., ICLR 2022)"
_FFT = "FFT report (seed 003)"
_STUDY = "this study's premise"


def standard_error(accs: Sequence[float], n_test: int) -> float:
    """Standard error (accuracy points) of the mean of ``accs`` (%, one per seed) measured on ``n_test`` samples."""
    if not accs:
        raise ValueError("accs is empty: no seed to judge")
    if n_test < 1:
        raise ValueError(f"n_test must be >= 1, got {n_test!r}")
    mean = sum(accs) / len(accs)
    seeds = math.sqrt(sum((a - mean) ** 2 for a in accs) / (len(accs) - 1) / len(accs)) if len(accs) > 1 else 0.0
    p = min(max(mean / 100, 0.0), 1.0)
    return max(seeds, 100 * math.sqrt(p * (1 - p) / n_test))


def _difference(a: Sequence[float], b: Sequence[float], n_test: int) -> tuple[float, float]:
    d = sum(a) / len(a) - sum(b) / len(b)
    return d, math.hypot(standard_error(a, n_test), standard_error(b, n_test))


def beats(a: Sequence[float], b: Sequence[float], n_test: int) -> tuple[str, float, float]:
    """``(verdict, difference, standard error)`` of "A's accuracy beats B's" (per-seed accuracies in %)."""
    d, se = _difference(a, b, n_test)
    verdict = CONFIRMED if d > Z * se else REFUTED if d < -Z * se else INCONCLUSIVE
    return verdict, d, se


def matches(a: Sequence[float], b: Sequence[float], n_test: int, margin: float = MARGIN) -> tuple[str, float, float]:
    """``(verdict, difference, standard error)`` of "A matches B": A's mean at most ``margin`` points below B's
    (refuted only when it is further below with two standard errors to spare)."""
    d, se = _difference(a, b, n_test)
    verdict = CONFIRMED if d >= -margin else REFUTED if d + Z * se < -margin else INCONCLUSIVE
    return verdict, d, se


def every_seed(passed: Sequence[bool]) -> str:
    """Confirmed when every seed passes a threshold, refuted when none does, inconclusive otherwise."""
    if not passed:
        raise ValueError("passed is empty: no seed to judge")
    return CONFIRMED if all(passed) else REFUTED if not any(passed) else INCONCLUSIVE


def combine(verdicts: Sequence[str]) -> str:
    """All parts of a claim must hold: any refuted part refutes it, all confirmed confirm it."""
    return REFUTED if REFUTED in verdicts else CONFIRMED if verdicts and all(v == CONFIRMED for v in verdicts) \
        else INCONCLUSIVE


# ------------------------------------------------------------------ evidence text


def _acc(row: dict[str, Any]) -> str:
    return f"{row['label']} {_mean(row['accs']):.2f} % (seeds {', '.join(f'{a:.1f}' for a in row['accs'])})"


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _diff(verdict_d_se: tuple[str, float, float]) -> str:
    _, d, se = verdict_d_se
    return f"difference {d:+.2f} ± {Z * se:.2f} (2 SE)"


# ------------------------------------------------------------------ the claims


def _rows(table: dict[str, list[dict]], point: str) -> dict[str, dict]:
    return {r["variant"]: r for r in table.get(point, [])}


def _with(table, points, variants: set[str], native_only: bool = False):
    """``(point, info, rows by variant)`` of every point that trained all of ``variants``."""
    for point, info in points.items():
        rows = _rows(table, point)
        if variants <= set(rows) and (info["native"] or not native_only):
            yield point, info, rows


def _dcls_beats(table, points) -> list[dict]:
    out = []
    for point, info, rows in _with(table, points, {"dcls", "large", "dilated"}, native_only=True):
        dcls = rows["dcls"]
        parts = {v: beats(dcls["accs"], rows[v]["accs"], info["n_test"]) for v in ("large", "dilated")}
        evidence = "; ".join(f"{_acc(dcls)} vs {_acc(rows[v])}: {_diff(parts[v])}" for v in parts)
        params = ", ".join(f"{rows[v]['label']} {rows[v]['params']:,}" for v in ("dcls", "large", "dilated"))
        out.append({"scope": point, "verdict": combine([p[0] for p in parts.values()]),
                    "evidence": f"{evidence}; parameters: {params}"})
    return out


def _paired(rows: dict[str, dict], a: str, b: str, key: str) -> list[float]:
    return [x / y for x, y in zip(rows[a][key], rows[b][key])]


def _dcls_cost(table, points) -> list[dict]:
    out = []
    for point, _, rows in _with(table, points, {"dcls", "large"}):
        ratios = _paired(rows, "dcls", "large", "throughputs")
        out.append({"scope": point, "verdict": every_seed([r >= LITTLE_COST for r in ratios]),
                    "evidence": "DCLS / large dense inference throughput per seed: "
                                + ", ".join(f"{r:.2f}" for r in ratios)})
    return out


def _niff_localised(table, points) -> list[dict]:
    out = []
    for point, info in points.items():
        row = _rows(table, point).get("niff")
        if row is None or not row["sizes"] or any(s is None for s in row["sizes"]):
            continue
        shares = [s["0.9"] / info["extent"] for s in row["sizes"]]
        out.append({"scope": point, "verdict": every_seed([s <= LOCALISED for s in shares]),
                    "evidence": "90 % of |kernel| mass within " + ", ".join(f"{s['0.9']:.1f}" for s in row["sizes"])
                                + f" of {info['extent']} taps per seed (share " + ", ".join(f"{s:.2f}" for s in shares)
                                + ")"})
    return out


def _flexconv_extents(table, points) -> list[dict]:
    out = []
    for point in points:
        row = _rows(table, point).get("flexconv")
        if row is None or not row["mask_extents"] or not all(row["mask_extents"]):
            continue
        spreads = [max(e[0] for e in layers) / min(e[0] for e in layers) for layers in row["mask_extents"]]
        extents = " / ".join("-".join(f"{e[0]:.0f}" for e in layers) for layers in row["mask_extents"])
        out.append({"scope": point, "verdict": every_seed([s >= DIFFERENT for s in spreads]),
                    "evidence": f"mask extents per layer (taps, per seed): {extents}; largest / smallest "
                                + ", ".join(f"{s:.2f}" for s in spreads)})
    return out


def _transfer_rows(table, points, key: str) -> list[dict]:
    out = []
    for point, info in points.items():
        rows = _rows(table, point)
        flex = rows.get("flexconv")
        if not info["native"] or flex is None:
            continue
        for target, result in sorted(flex.get("transfers", {}).items(), key=lambda kv: int(kv[0])):
            verdict = matches(result[key], flex["accs"], info["n_test"])
            control = rows.get("small", {}).get("transfers", {}).get(target)
            text = (f"FlexConv trained at {info['resolution']}: {_mean(flex['accs']):.2f} %; at {target} "
                    f"{'as is' if key == 'accs' else 'after the fine-tune'}: {_mean(result[key]):.2f} % (seeds "
                    + ", ".join(f"{a:.1f}" for a in result[key]) + f"), {_diff(verdict)}")
            if control is not None:
                text += f"; small dense control: {_mean(rows['small']['accs']):.2f} -> {_mean(control[key]):.2f} %"
            out.append({"scope": f"{point} -> {info['dataset']}_{target}", "verdict": verdict[0], "evidence": text})
    return out


def _fft_training(table, points) -> list[dict]:
    out = []
    for point, info, rows in _with(table, points, {"fft", "large"}):
        both = [matches(rows["fft"]["accs"], rows["large"]["accs"], info["n_test"]),
                matches(rows["large"]["accs"], rows["fft"]["accs"], info["n_test"])]
        out.append({"scope": point, "verdict": combine([v[0] for v in both]),
                    "evidence": f"{_acc(rows['fft'])} vs {_acc(rows['large'])}: {_diff(both[0])}"})
    return out


def _fft_faster(table, points) -> list[dict]:
    out = []
    for point in points:
        row = _rows(table, point).get("large")
        if row is None or not row.get("paths") or any(p is None for p in row["paths"]):
            continue
        same = every_seed([p["agreement"] >= AGREEMENT for p in row["paths"]])
        faster = every_seed([p["fft_throughput"] > p["direct_throughput"] for p in row["paths"]])
        verdict = REFUTED if same == REFUTED or faster == REFUTED else combine([same, faster])
        out.append({"scope": point, "verdict": verdict,
                    "evidence": "trained large dense model, direct vs FFT path on the same weights, per seed: "
                                + "; ".join(f"{100 * p['agreement']:.1f} % of {p['samples']} predictions agree, "
                                            f"max logit difference {p['max_abs_diff']:.1e}, FFT / direct throughput "
                                            f"{p['fft_throughput'] / p['direct_throughput']:.2f}"
                                            for p in row["paths"])})
    return out


def _sgconv_matches(table, points) -> list[dict]:
    out = []
    for point, info, rows in _with(table, points, {"sgconv", "large"}):
        fewer = rows["sgconv"]["params"] < rows["large"]["params"]
        accuracy = matches(rows["sgconv"]["accs"], rows["large"]["accs"], info["n_test"])
        out.append({"scope": point, "verdict": combine([CONFIRMED if fewer else REFUTED, accuracy[0]]),
                    "evidence": f"{_acc(rows['sgconv'])} vs {_acc(rows['large'])}: {_diff(accuracy)}; parameters "
                                f"{rows['sgconv']['params']:,} vs {rows['large']['params']:,}"})
    return out


def _sweep_pairs(table, points, variants: Sequence[str]) -> list[tuple[str, str, dict]]:
    """``(native point, highest point, info of the highest)`` per dataset whose both ends trained ``variants``."""
    by_dataset: dict[str, list[str]] = {}
    for point, info in points.items():
        if set(variants) <= set(_rows(table, point)):
            by_dataset.setdefault(info["dataset"], []).append(point)
    pairs = []
    for names in by_dataset.values():
        names.sort(key=lambda p: points[p]["resolution"])
        if len(names) > 1 and points[names[0]]["native"]:
            pairs.append((names[0], names[-1], points[names[-1]]))
    return pairs


def _fit_accuracy(table, points) -> list[dict]:
    out = []
    for low, high, info in _sweep_pairs(table, points, ("vit", "fit")):
        lo, hi = _rows(table, low), _rows(table, high)
        n_lo, n_hi = points[low]["n_test"], info["n_test"]
        growth = (_mean(hi["fit"]["accs"]) - _mean(hi["vit"]["accs"])) - (_mean(lo["fit"]["accs"]) -
                                                                            _mean(lo["vit"]["accs"]))
        se = math.sqrt(sum(standard_error(r["accs"], n) ** 2 for r, n in
                           ((hi["fit"], n_hi), (hi["vit"], n_hi), (lo["fit"], n_lo), (lo["vit"], n_lo))))
        verdict = CONFIRMED if growth > Z * se else REFUTED if growth < -Z * se else INCONCLUSIVE
        out.append({"scope": f"{low} -> {high}", "verdict": verdict,
                    "evidence": f"FiT - ViT: {_mean(lo['fit']['accs']) - _mean(lo['vit']['accs']):+.2f} points at "
                                f"{low}, {_mean(hi['fit']['accs']) - _mean(hi['vit']['accs']):+.2f} at {high}; "
                                f"growth {growth:+.2f} ± {Z * se:.2f} (2 SE)"})
    return out


def _fit_speed(table, points) -> list[dict]:
    out = []
    for low, high, _ in _sweep_pairs(table, points, ("vit", "fit")):
        lo, hi = _rows(table, low), _rows(table, high)
        ratio_lo, ratio_hi = _paired(lo, "fit", "vit", "throughputs"), _paired(hi, "fit", "vit", "throughputs")
        out.append({"scope": f"{low} -> {high}", "verdict": every_seed([h > l for h, l in zip(ratio_hi, ratio_lo)]),
                    "evidence": "FiT / ViT inference throughput per seed: " + ", ".join(f"{r:.2f}" for r in ratio_lo)
                                + f" at {low}, " + ", ".join(f"{r:.2f}" for r in ratio_hi) + f" at {high}"})
    return out


def _small_falls(table, points) -> list[dict]:
    out = []
    for low, high, info in _sweep_pairs(table, points, ("small",)):
        native, top = _rows(table, low)["small"], _rows(table, high)["small"]
        verdict = beats(native["accs"], top["accs"], max(points[low]["n_test"], info["n_test"]))
        out.append({"scope": f"{low} -> {high}", "verdict": verdict[0],
                    "evidence": f"{_acc(native)} at {low} vs {_mean(top['accs']):.2f} % at {high}: {_diff(verdict)}"})
    return out


_Rule = Callable[[dict, dict], list[dict]]
_CLAIMS: tuple[tuple[str, str, str, _Rule, str], ...] = (
    ("A small dense kernel loses accuracy as the resolution rises (its receptive field covers less)", _STUDY,
     "the small dense model at the native resolution beats itself at the highest", _small_falls,
     "small dense at the native and the highest resolution of a dataset"),
    ("DCLS beats the dilated and the dense large kernel at equal parameters", _DCLS,
     "DCLS beats both (2 SE), at the native resolution where its parameters are matched", _dcls_beats,
     "DCLS, large dense and dilated at a native resolution"),
    ("DCLS costs little throughput", _DCLS,
     f"every seed's DCLS throughput is at least {LITTLE_COST:.0%} of the dense large model's", _dcls_cost,
     "DCLS and large dense at one point"),
    ("NIFF's learned filters are well localised", _NIFF,
     f"every seed's 90 %-mass window is at most {LOCALISED:.0%} of the input's extent", _niff_localised,
     "NIFF"),
    ("FlexConv learns different extents per layer", _FLEX,
     f"every seed's largest layer extent is at least {DIFFERENT}x its smallest", _flexconv_extents, "FlexConv"),
    ("FlexConv deploys at a higher resolution without retraining", _FLEX,
     f"FlexConv at the target resolution matches itself at the training one (within {MARGIN:g} point)",
     lambda t, p: _transfer_rows(t, p, "accs"), "FlexConv with a cross-resolution evaluation"),
    ("FlexConv deploys at a higher resolution after a short fine-tune", _FLEX,
     "after a short fine-tune at the target resolution it matches itself at the training one "
     f"(within {MARGIN:g} point)",
     lambda t, p: _transfer_rows(t, p, "finetuned_accs"), "FlexConv with a cross-resolution evaluation"),
    ("FFT convolution gives the same accuracy (trained with it)", _FFT,
     f"FFT-trained and direct-trained large dense models match each other both ways (within {MARGIN:g} point)",
     _fft_training, "FFT and large dense at one point"),
    ("FFT convolution gives the same accuracy faster (same weights)", _FFT,
     f"on every seed's trained dense model, >= {AGREEMENT:.0%} of predictions agree and the FFT path has the "
     "higher inference throughput", _fft_faster, "large dense"),
    ("SGConv-style kernels match dense ones with fewer parameters", _FFT,
     f"fewer parameters than the large dense model and matching accuracy (within {MARGIN:g} point)",
     _sgconv_matches, "SGConv and large dense at one point"),
    ("FiT's accuracy advantage over ViT grows with resolution", _FFT,
     "(FiT - ViT) at the highest resolution exceeds it at the native one by 2 SE", _fit_accuracy,
     "ViT and FiT at two resolutions"),
    ("FiT's speed advantage over ViT grows with resolution", _FFT,
     "every seed's FiT / ViT throughput ratio is higher at the highest resolution than at the native one",
     _fit_speed, "ViT and FiT at two resolutions"),
)


def judge_claims(table: dict[str, list[dict[str, Any]]], points: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per claim and scope: ``claim``, ``source``, ``scope``, ``verdict``, ``evidence``, ``rule``.

    ``table``: per point, rows with ``variant``, ``label``, ``params`` and per-seed lists ``accs`` (%),
    ``throughputs``, ``sizes`` (effective-size maps), ``mask_extents``, ``paths`` and, at a native point,
    ``transfers`` ``{target: {"accs", "finetuned_accs"}}``. ``points``: per point ``dataset``, ``resolution``,
    ``native``, ``n_test`` and ``extent`` (input samples per axis). A claim with no data gets one inconclusive
    row saying what it needs.
    """
    claims = []
    for claim, source, rule, judge, needs in _CLAIMS:
        rows = judge(table, points)
        if not rows:
            rows = [{"scope": "-", "verdict": INCONCLUSIVE, "evidence": f"not measured: needs {needs}"}]
        claims += [{"claim": claim, "source": source, "rule": rule, **row} for row in rows]
    return claims


def format_claims(claims: Sequence[dict[str, Any]]) -> str:
    """The markdown claims table, then the rule behind each claim's verdict."""
    lines = ["| claim | from | where | verdict | evidence |", "|---|---|---|---|---|"]
    for c in claims:
        cells = (c["claim"], c["source"], c["scope"], f"**{c['verdict']}**", c["evidence"])
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")  # "|kernel|" in a cell
    lines += ["", "Rules (verdict per row):", ""]
    seen = []
    for c in claims:
        if c["claim"] not in seen:
            seen.append(c["claim"])
            lines.append(f"- *{c['claim']}*: confirmed when {c['rule']}.")
    return "\n".join(lines)
