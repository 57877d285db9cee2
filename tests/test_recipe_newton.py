"""``iclab reproduce newton --quick`` (Fu et al.'s claims on block-form LSAs): every claim's verdict at three seeds,
the GD construction as the control, and the maps read from the probe."""

from __future__ import annotations

import pandas as pd
import pytest

from iclab.cli import main


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("newton")
    assert main(["reproduce", "newton", "--quick", "--out", str(out), "--quiet", "--jobs", "2"]) == 3
    return out


def test_verdicts(quick):
    claims = pd.read_csv(quick / "claims.csv").set_index("key")
    assert claims["status"].to_dict() == {"L2/newton-grows": "reproduced", "L2/newton-beats-gd": "not reproduced",
                                          "L2/gd-steps": "reproduced"}  # fmt: skip
    assert claims.loc["L2/newton-beats-gd", "seeds_held"] == 0  # GD at a fitted step matches better at every seed
    report = (quick / "report.md").read_text()
    assert "**2 of 3 paper claims reproduced, 1 not reproduced.**" in report and "Fu et al. observed" in report


def test_the_maps_and_the_gd_construction(quick):
    """Every seed probed both depths; the one-layer model is one GD step; the 2-layer GD construction's last layer
    matches exactly 2 GD steps (the control of 'more GD steps than layers'), and Newton–Schulz matches it worse."""
    maps = pd.read_csv(quick / "maps.csv")
    assert sorted(set(maps["seed"])) == [0, 1, 2] and len(maps) == 3 * 3
    one = maps[maps.depth == 1]
    assert (one["gd_k"] == 1).all() and (one["gd_difference"] < 1e-3).all()
    construction = pd.read_csv(quick / "constructions.csv")
    last = construction[construction.layer == 2]
    assert (last["gd_k"] == 2).all() and (last["gd_difference"] < 1e-12).all()
    assert (last["newton_difference"] > 1e3 * last["gd_difference"]).all()
    by_seed = pd.read_csv(quick / "claims_by_seed.csv")
    assert not by_seed[by_seed.subject != "model"]["passes"].any()
    assert (quick / "figures" / "newton_map.png").exists() and (
        quick / "probes" / "seed0" / "L2" / "report.md"
    ).exists()
