"""The claims logic on fixed inputs: standard errors, the two-standard-error rules, every claim's verdict."""

import math

import pytest

from largekernel.study import claims
from largekernel.study.claims import CONFIRMED, INCONCLUSIVE, REFUTED
from largekernel.study.report import pareto_front


def test_standard_error_is_the_larger_of_seed_and_binomial_error():
    # seeds 90 and 94: sample std 2.828, over sqrt(2) -> 2.0; binomial sqrt(0.92 * 0.08 / 1000) = 0.858 points
    assert claims.standard_error([90.0, 94.0], 1000) == pytest.approx(2.0)
    # two seeds that agree to the sample: the test set's own sampling error remains
    assert claims.standard_error([98.0, 98.0], 1000) == pytest.approx(100 * math.sqrt(0.98 * 0.02 / 1000))
    assert claims.standard_error([100.0], 50) == 0.0
    with pytest.raises(ValueError, match="accs"):
        claims.standard_error([], 10)
    with pytest.raises(ValueError, match="n_test"):
        claims.standard_error([50.0], 0)


def test_beats_and_matches_use_two_standard_errors():
    # se = 2.0 each (above), difference se = 2 sqrt(2) = 2.83: 2 SE = 5.66
    verdict, d, se = claims.beats([96.0, 100.0], [90.0, 94.0], 1000)
    assert (verdict, d) == (CONFIRMED, pytest.approx(6.0)) and se == pytest.approx(math.hypot(2.0, 2.0))
    assert claims.beats([93.0, 97.0], [90.0, 94.0], 1000)[0] == INCONCLUSIVE  # 3 < 5.66
    assert claims.beats([84.0, 88.0], [90.0, 94.0], 1000)[0] == REFUTED
    # matches (margin 1 point): a mean at most 1 point below confirms, d + 2se < -1 refutes
    assert claims.matches([49.0, 49.0], [50.0, 50.0], 1000)[0] == CONFIRMED  # exactly at the margin
    assert claims.matches([48.0, 48.0], [50.0, 50.0], 10 ** 6)[0] == REFUTED  # se 0.05 each: -2 + 0.14 < -1
    assert claims.matches([48.0, 48.0], [50.0, 50.0], 1000)[0] == INCONCLUSIVE  # se 1.58 each: -2 + 4.5 > -1
    assert claims.every_seed([True, True]) == CONFIRMED
    assert claims.every_seed([False, False]) == REFUTED
    assert claims.every_seed([True, False]) == INCONCLUSIVE
    assert claims.combine([CONFIRMED, INCONCLUSIVE]) == INCONCLUSIVE
    assert claims.combine([CONFIRMED, REFUTED]) == REFUTED
    assert claims.combine([CONFIRMED, CONFIRMED]) == CONFIRMED


def _row(variant, accs, *, params=1000, throughputs=(100.0, 100.0), size90=None, masks=(), paths=None,
         transfers=None):
    return {"variant": variant, "label": variant, "accs": list(accs), "params": params,
            "throughputs": list(throughputs), "sizes": [{"0.5": 1.0, "0.9": s, "0.99": s} for s in size90 or []],
            "mask_extents": [list(m) for m in masks], "paths": paths or [None] * len(accs),
            "transfers": transfers or {}}


def _inputs():
    paths = [{"agreement": 1.0, "max_abs_diff": 1e-6, "samples": 64, "direct_throughput": 10.0,
              "fft_throughput": 30.0}] * 2
    native = [
        _row("small", [95.0, 95.0], transfers={"160": {"accs": [40.0, 42.0], "finetuned_accs": [80.0, 82.0]}}),
        _row("large", [80.0, 80.0], params=1400, paths=paths),
        _row("dilated", [70.0, 71.0]),
        _row("dcls", [96.0, 96.5], params=1390, throughputs=(90.0, 70.0)),
        _row("flexconv", [93.0, 93.0], masks=[[[5.0], [9.0], [17.0]], [[7.0], [7.0], [21.0]]],
             transfers={"160": {"accs": [92.8, 93.0], "finetuned_accs": [80.0, 81.0]}}),
        _row("niff", [90.0, 90.0], size90=[8.0, 9.0]),
        _row("fft", [80.0, 80.0], params=1400),
        _row("sgconv", [85.0, 85.0], params=1200),
    ]
    high = [
        _row("small", [60.0, 62.0]),
        _row("large", [70.0, 70.0], params=5000,
             paths=[{**paths[0], "fft_throughput": 5.0}, {**paths[0], "fft_throughput": 5.0}]),
        _row("niff", [85.0, 85.0], size90=[50.0, 10.0]),
        _row("sgconv", [75.0, 75.0], params=3000),
    ]
    table = {"m_40": native, "m_160": high}
    points = {"m_40": {"dataset": "m", "resolution": 40, "native": True, "n_test": 1000, "extent": 40},
              "m_160": {"dataset": "m", "resolution": 160, "native": False, "n_test": 1000, "extent": 160}}
    return table, points


def _verdicts(found, claim_start):
    return {c["scope"]: c["verdict"] for c in found if c["claim"].startswith(claim_start)}


def test_every_claim_on_a_fixed_table():
    found = claims.judge_claims(*_inputs())
    assert _verdicts(found, "A small dense kernel loses") == {"m_40 -> m_160": CONFIRMED}
    assert _verdicts(found, "DCLS beats") == {"m_40": CONFIRMED}  # 96.25 vs 80 and vs 70.5
    # 90/100 passes 0.8, 70/100 fails: the seeds disagree
    assert _verdicts(found, "DCLS costs") == {"m_40": INCONCLUSIVE}
    # 8 and 9 of 40 taps (<= 25 %) at the native size; 50 of 160 fails while 10 of 160 passes
    assert _verdicts(found, "NIFF's") == {"m_40": CONFIRMED, "m_160": INCONCLUSIVE}
    assert _verdicts(found, "FlexConv learns") == {"m_40": CONFIRMED}  # 17 / 5 and 21 / 7 >= 1.5
    assert _verdicts(found, "FlexConv deploys at a higher resolution without") == {"m_40 -> m_160": CONFIRMED}
    assert _verdicts(found, "FlexConv deploys at a higher resolution after") == {"m_40 -> m_160": REFUTED}
    assert _verdicts(found, "FFT convolution gives the same accuracy (trained") == {"m_40": CONFIRMED}
    # FFT 3x faster at m_40; slower on both seeds at m_160
    assert _verdicts(found, "FFT convolution gives the same accuracy faster") == {"m_40": CONFIRMED,
                                                                                  "m_160": REFUTED}
    # fewer parameters at both points; 85 vs 80 matches, 75 vs 70 matches
    assert _verdicts(found, "SGConv") == {"m_40": CONFIRMED, "m_160": CONFIRMED}
    # no ViT / FiT in this table: one inconclusive row that says what is missing
    fit = [c for c in found if c["claim"].startswith("FiT's accuracy")]
    assert [(c["scope"], c["verdict"]) for c in fit] == [("-", INCONCLUSIVE)]
    assert "not measured" in fit[0]["evidence"]
    table = claims.format_claims(found)
    assert table.splitlines()[0] == "| claim | from | where | verdict | evidence |"
    assert "| **refuted** |" in table and "confirmed when" in table
    assert "\\|kernel\\| mass" in table  # a pipe inside a cell is escaped: every row keeps five columns


def test_sgconv_with_more_parameters_is_refuted_and_fit_growth_is_judged():
    table, points = _inputs()
    table["m_40"][7]["params"] = 2000  # SGConv now larger than the dense kernel (1400)
    table["m_40"] += [_row("vit", [50.0, 52.0], throughputs=(100.0, 100.0)),
                      _row("fit", [50.0, 52.0], throughputs=(120.0, 110.0))]
    table["m_160"] += [_row("vit", [40.0, 42.0], throughputs=(10.0, 10.0)),
                       _row("fit", [60.0, 62.0], throughputs=(30.0, 40.0))]
    found = claims.judge_claims(table, points)
    assert _verdicts(found, "SGConv")["m_40"] == REFUTED
    assert _verdicts(found, "FiT's accuracy") == {"m_40 -> m_160": CONFIRMED}  # 0 -> +20 points
    assert _verdicts(found, "FiT's speed") == {"m_40 -> m_160": CONFIRMED}  # 1.2 / 1.1 -> 3 / 4


def test_pareto_front():
    costs, accs = [1.0, 2.0, 3.0, 2.5, 0.5], [80.0, 90.0, 85.0, 95.0, 70.0]
    # (3.0, 85) is beaten by (2.0, 90); the rest trade cost for accuracy
    assert pareto_front(costs, accs) == [4, 0, 1, 3]
    assert pareto_front([1.0, 1.0], [50.0, 50.0]) == [0, 1]  # ties dominate nobody
