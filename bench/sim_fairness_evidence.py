"""Chance and power of the fairness alert's evidence rule, per window, from binomial draws (no exporter, no rules).

Two groups of equal size n per window, the reference (or most selected) group selected at rate p, the other at
ratio x p. The rule of prometheus/rules/fairness.yml: z = (ln(fairness_ratio_min) - ln(p_g / p_r)) / se with
se² = 1/x_g - 1/n_g + 1/x_r - 1/n_r (x: selections; a group never selected counts 0.5), firing when
z > evidence_z. `reference` tests the group against the reference group; `spread` the lower against the higher.
The true positive rate gap: z = (|t_g - t_r| - fairness_gap_max) / sqrt(t_g(1-t_g)/P_g + t_r(1-t_r)/P_r).
Per window only: the `for:`, the window choice and the overlap of windows are bench/bench_alerts.py's to measure.

    python bench/sim_fairness_evidence.py [--windows 200000] [--confidence 0.99]
"""

from __future__ import annotations

import argparse
import math
from statistics import NormalDist

import numpy as np


def di_z(xg, ng, xr, nr, ratio_min=0.8):
    xg, xr = np.maximum(xg, 0.5), np.maximum(xr, 0.5)
    return (math.log(ratio_min) - np.log((xg / ng) / (xr / nr))) / np.sqrt(1 / xg - 1 / ng + 1 / xr - 1 / nr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=200_000)
    ap.add_argument("--confidence", type=float, default=0.99)
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    z, k = NormalDist().inv_cdf(a.confidence), a.windows
    print(f"evidence_z {z:.4f}; {k} windows per cell; share of windows where the condition holds")
    print(
        "\ndisparate impact < 0.8   n/group  rate | equal: reference spread (point estimate: reference spread)"
        " | true 0.6: reference spread | true 0.75: reference"
    )
    for n in (100, 200, 1000, 3000):
        for p in (0.1, 0.3):
            row = []
            for ratio in (1.0, 0.6, 0.75):
                g, r = rng.binomial(n, p * ratio, k), rng.binomial(n, p, k)
                lo, hi = np.minimum(g, r), np.maximum(g, r)
                row.append(
                    (
                        (di_z(g, n, r, n) > z).mean(),
                        (di_z(lo, n, hi, n) > z).mean(),
                        (g < 0.8 * r).mean(),
                        (lo < 0.8 * hi).mean(),
                    )
                )
            (c_ref, c_spr, o_ref, o_spr), (d_ref, d_spr, _, _), (q_ref, _, _, _) = row
            print(
                f"{'':25}{n:8d}  {p:.1f} | {c_ref:7.2%} {c_spr:7.2%}   ({o_ref:6.1%} {o_spr:6.1%})"
                f"        | {d_ref:6.1%} {d_spr:6.1%}             | {q_ref:6.1%}"
            )
    print("\ntrue positive rate gap > 0.1   positives/group  tpr | equal (point estimate) | true gap 0.2")
    for pos in (100, 200, 1000):
        for t in (0.5, 0.8):
            res = []
            for gap in (0.0, 0.2):
                tg, tr = rng.binomial(pos, t - gap, k) / pos, rng.binomial(pos, t, k) / pos
                with np.errstate(divide="ignore", invalid="ignore"):
                    zz = (np.abs(tg - tr) - 0.1) / np.sqrt(tg * (1 - tg) / pos + tr * (1 - tr) / pos)
                res.append(((zz > z).mean(), (np.abs(tg - tr) > 0.1).mean()))
            print(f"{'':31}{pos:8d}  {t:.1f} | {res[0][0]:6.2%} ({res[0][1]:5.1%})       | {res[1][0]:6.1%}")


if __name__ == "__main__":
    main()
