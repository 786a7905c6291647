"""fairalign.envs.rlpa.metrics: AL(k), AVG, N-IR, N-R² — the paper's RLPA row and a numpy reference."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fairalign.envs.rlpa.metrics import alignment_by_turn, dialogue_metrics

PAPER_RLPA_AL = [62.16, 68.92, 70.27, 74.32, 72.97, 74.32, 75.68, 78.38, 77.03, 79.73]


def test_reproduces_paper_rlpa_row():
    m = dialogue_metrics(PAPER_RLPA_AL)
    assert round(m["avg"], 2) == 73.38
    assert round(m["n_ir"], 3) == 0.090
    assert round(m["n_r2"], 3) == 0.855


def _reference(al):
    """Straight from the formula with numpy: min-max normalize, polyfit degree 1, R²."""
    y = np.asarray(al, dtype=float)
    yn = (y - y.min()) / (y.max() - y.min())
    x = np.arange(1, len(y) + 1)
    slope, intercept = np.polyfit(x, yn, 1)
    fit = slope * x + intercept
    r2 = 1 - ((yn - fit) ** 2).sum() / ((yn - yn.mean()) ** 2).sum()
    return y.mean(), slope, r2


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 100, allow_nan=False), min_size=2, max_size=15).filter(lambda v: max(v) - min(v) > 1e-3))
def test_matches_numpy_reference(al):
    m = dialogue_metrics(al)
    avg, slope, r2 = _reference(al)
    assert m["avg"] == pytest.approx(avg, abs=1e-9)
    assert m["n_ir"] == pytest.approx(slope, abs=1e-9)
    assert m["n_r2"] == pytest.approx(r2, abs=1e-9)
    assert 0.0 <= m["n_r2"] <= 1.0 + 1e-12


def test_hand_computed_linear_curve():
    # AL rising linearly over 5 turns: normalized y = 0, .25, .5, .75, 1 -> slope 0.25, R² 1
    m = dialogue_metrics([10, 20, 30, 40, 50])
    assert m == pytest.approx({"avg": 30.0, "n_ir": 0.25, "n_r2": 1.0})
    # falling curve: negative slope, same fit quality
    assert dialogue_metrics([50, 40, 30, 20, 10])["n_ir"] == pytest.approx(-0.25)


def test_flat_curve_and_bad_input():
    assert dialogue_metrics([40, 40, 40]) == {"avg": 40.0, "n_ir": 0.0, "n_r2": 0.0}
    with pytest.raises(ValueError, match="at least 2"):
        dialogue_metrics([50.0])
    with pytest.raises(ValueError, match="finite"):
        dialogue_metrics([50.0, math.nan])


def test_alignment_by_turn_definition():
    recs = [
        {"turn": 1, "total": 0.0, "profile": 0.0, "response": 0.0},
        {"turn": 1, "total": 2.0, "profile": 1.0, "response": 1.0},
        {"turn": 2, "total": 1.5, "profile": 0.5, "response": 1.0},
        {"turn": 2, "total": 0.5, "profile": 0.5, "response": 0.0},
    ]
    # AL(k) = mean(total)/2*100: turn 1 -> (0 + 2)/2/2*100 = 50, turn 2 -> (1.5 + .5)/2/2*100 = 50
    assert alignment_by_turn(recs) == pytest.approx([50.0, 50.0])
    assert alignment_by_turn(recs, key="profile") == pytest.approx([50.0, 50.0])
    assert alignment_by_turn(recs, key="response") == pytest.approx([50.0, 50.0])
    recs[3]["response"] = 1.0
    assert alignment_by_turn(recs, key="response") == pytest.approx([50.0, 100.0])
    gap = alignment_by_turn([{"turn": 1, "total": 1.0}, {"turn": 3, "total": 2.0}])
    assert gap[0] == 50.0 and math.isnan(gap[1]) and gap[2] == 100.0
    assert alignment_by_turn([]) == []
    with pytest.raises(ValueError, match="key must be one of"):
        alignment_by_turn(recs, key="reward")
