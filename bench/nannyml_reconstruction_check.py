"""NannyML's PCA reconstruction-error drift, against a frozen, streaming re-implementation.

Checks that the algorithm written down in bench/NANNYML_RECONSTRUCTION.md reproduces NannyML 0.13.1's
DataReconstructionDriftCalculator to floating-point precision, in the form mlmon will compute it: the reference
fit (imputation, count encoding, standard scaling, PCA) is frozen; rows arrive in batches of arbitrary size, each
row's reconstruction error is computed vectorised, and only per-bucket sums (count, sum, sum of squares) are kept;
a window's figure comes from the sums of its buckets.

Scenarios (10 numeric features, 20,000 reference rows, analysis in chunks of 2,000):
  chunks 0-4   like the reference
  chunks 5-9   the correlation between f0 and f1 flipped in sign (marginals unchanged)
  chunks 10-14 all 10 features shifted by +0.3 reference standard deviations
Variant B adds two categorical features (4 and 3 categories), 5% missing values in f3 and f7, 2% missing values
in cat_a (to exercise the categorical imputer) and, in the last chunk only, 1% of cat_b set to a category the
reference never saw. Per chunk, the per-feature two-sample KS statistic against the reference (scipy's ks_2samp)
shows what univariate drift sees.

Needs nannyml 0.13.1 (the bench venv has it). Run: python bench/nannyml_reconstruction_check.py   (~10 s)
"""

from __future__ import annotations

import logging
import os
import time
import warnings

os.environ.setdefault("NML_DISABLE_USAGE_LOGGING", "1")  # NannyML otherwise sends usage events over the network

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy.stats import ks_2samp  # noqa: E402

SEED = 20240611
N_FEATURES = 10
N_REF = 20_000
CHUNK = 2_000
BUCKET = 500  # rows per "time bucket" in the streaming re-implementation; a window (chunk) is 4 buckets
SCENARIOS = ["same"] * 5 + ["corr_flip"] * 5 + ["shift_0.3sd"] * 5
SHIFT = 0.3
PAIR_RHO = 0.9
N_COMPONENTS = 0.65
SIGMA = 3  # StandardDeviationThreshold's default multipliers


# ---------------------------------------------------------------------------------------------------------- data


class Generator:
    """Numeric features: f0,f1 a strongly correlated pair (rho=0.9), independent of f2..f9, which have a fixed
    random correlation (3-factor model); random means and scales. Flipping the sign of f1's standardised value flips
    corr(f0, f1) and nothing else (the pair block is independent of the rest, and each marginal is symmetric)."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        a = rng.normal(size=(8, 3))
        cov8 = a @ a.T + np.diag(rng.uniform(0.2, 1.0, 8))
        d = np.sqrt(np.diag(cov8))
        corr = np.zeros((N_FEATURES, N_FEATURES))
        corr[:2, :2] = [[1.0, PAIR_RHO], [PAIR_RHO, 1.0]]
        corr[2:, 2:] = cov8 / np.outer(d, d)
        self.corr = corr
        self.chol = np.linalg.cholesky(corr)
        self.means = rng.uniform(-5, 5, N_FEATURES)
        self.scales = rng.uniform(0.5, 3.0, N_FEATURES)

    def latent(self, n: int, scenario: str) -> np.ndarray:
        z = self.rng.standard_normal((n, N_FEATURES)) @ self.chol.T
        if scenario == "corr_flip":
            z[:, 1] = -z[:, 1]
        elif scenario == "shift_0.3sd":
            z += SHIFT
        return z

    def frame(self, z: np.ndarray, categorical: bool, unseen_share: float = 0.0) -> pd.DataFrame:
        x = self.means + z * self.scales
        df = pd.DataFrame(x, columns=[f"f{i}" for i in range(N_FEATURES)])
        if not categorical:
            return df
        n = len(df)
        rng = self.rng
        # cat_a follows f2 (4 categories), cat_b follows f0 (3 categories), both with noise
        ua = z[:, 2] + 0.5 * rng.standard_normal(n)
        cat_a = np.array(["a", "b", "c", "d"], dtype=object)[np.digitize(ua, [-0.8, 0.0, 0.9])]
        ub = z[:, 0] + 0.7 * rng.standard_normal(n)
        cat_b = np.array(["x", "y", "z"], dtype=object)[np.digitize(ub, [-0.3, 0.8])]
        for col in ("f3", "f7"):
            df.loc[rng.random(n) < 0.05, col] = np.nan
        cat_a[rng.random(n) < 0.02] = np.nan
        if unseen_share:
            cat_b[rng.random(n) < unseen_share] = "NEW"
        # put the categoricals in the middle, so column order (not sorted names) has to be honoured
        df.insert(4, "cat_a", cat_a)
        df.insert(8, "cat_b", cat_b)
        return df


def make_data(categorical: bool, seed: int):
    gen = Generator(np.random.default_rng(seed))
    reference = gen.frame(gen.latent(N_REF, "same"), categorical)
    chunks = []
    for i, scenario in enumerate(SCENARIOS):
        unseen = 0.01 if (categorical and i == len(SCENARIOS) - 1) else 0.0
        chunks.append(gen.frame(gen.latent(CHUNK, scenario), categorical, unseen_share=unseen))
    analysis = pd.concat(chunks, ignore_index=True)
    return reference, analysis


# ----------------------------------------------------------------------------------------------------- NannyML


def run_nannyml(reference: pd.DataFrame, analysis: pd.DataFrame, columns: list[str], **kwargs):
    import nannyml as nml

    calc = nml.DataReconstructionDriftCalculator(column_names=columns, chunk_size=CHUNK, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        calc.fit(reference)
        result = calc.calculate(analysis)
    df = result.to_df()  # reference chunks first, then analysis chunks; two-level columns
    m = "reconstruction_error"
    out = pd.DataFrame(
        {
            "period": df[("chunk", "period")].to_numpy(),
            "value": df[(m, "value")].to_numpy(float),
            "sampling_error": df[(m, "sampling_error")].to_numpy(float),
            "upper_cb": df[(m, "upper_confidence_boundary")].to_numpy(float),
            "lower_cb": df[(m, "lower_confidence_boundary")].to_numpy(float),
            "upper_threshold": df[(m, "upper_threshold")].to_numpy(float),
            "lower_threshold": df[(m, "lower_threshold")].to_numpy(float),
            "alert": df[(m, "alert")].to_numpy(bool),
        }
    )
    return calc, out


# ------------------------------------------------------------------------------------ frozen re-implementation


class FrozenReconstruction:
    """Everything learnt from the reference, as plain arrays; numpy only (no sklearn, no category_encoders)."""

    def __init__(self, reference: pd.DataFrame, columns: list[str], n_components: float = N_COMPONENTS):
        self.columns = list(columns)
        self.categorical = {c for c in columns if str(reference[c].dtype) in ("object", "string", "category", "bool")}
        self.fill: dict[str, object] = {}
        self.freq: dict[str, dict] = {}
        for c in self.columns:
            col = reference[c]
            if c in self.categorical:
                counts = col.dropna().value_counts()
                top = counts.max()
                mode = min(v for v, k in counts.items() if k == top)  # ties: smallest value, as SimpleImputer
                self.fill[c] = mode
                self.freq[c] = (col.fillna(mode).value_counts() / len(col)).to_dict()  # share of imputed reference
            else:
                self.fill[c] = float(np.nanmean(col.to_numpy(float)))
        m = self._encode(reference)
        self.center = m.mean(axis=0)
        scale = m.std(axis=0)  # population std (ddof=0)
        scale[scale == 0.0] = 1.0
        self.scale = scale
        z = (m - self.center) / self.scale
        self.mu = z.mean(axis=0)  # PCA's own centring (~0 after scaling, kept for exactness)
        _, s, vt = np.linalg.svd(z - self.mu, full_matrices=False)
        var = s**2 / (len(z) - 1)
        ratio_cum = np.cumsum(var / var.sum())
        k = int(np.searchsorted(ratio_cum, n_components, side="right")) + 1
        self.k = k
        self.explained = float(ratio_cum[k - 1])
        self.v = vt[:k].T  # (n_features, k)

    def _encode(self, df: pd.DataFrame) -> np.ndarray:
        cols = []
        for c in self.columns:
            col = df[c]
            if c in self.categorical:
                cols.append(col.fillna(self.fill[c]).map(self.freq[c]).fillna(0.0).to_numpy(float))  # unseen -> 0
            else:
                cols.append(col.fillna(self.fill[c]).to_numpy(float))
        return np.column_stack(cols)

    def row_errors(self, df: pd.DataFrame) -> np.ndarray:
        r = (self._encode(df) - self.center) / self.scale - self.mu
        r -= (r @ self.v) @ self.v.T
        return np.sqrt(np.einsum("ij,ij->i", r, r))


class BucketSums:
    """What the exporter keeps: per bucket, count, sum and sum of squares of row errors."""

    def __init__(self, n_buckets: int):
        self.n = np.zeros(n_buckets)
        self.s = np.zeros(n_buckets)
        self.q = np.zeros(n_buckets)

    def add(self, bucket_of_row: np.ndarray, err: np.ndarray):
        np.add.at(self.n, bucket_of_row, 1.0)
        np.add.at(self.s, bucket_of_row, err)
        np.add.at(self.q, bucket_of_row, err * err)

    def window(self, first: int, last: int) -> dict:
        n, s, q = self.n[first:last].sum(), self.s[first:last].sum(), self.q[first:last].sum()
        mean = s / n
        std = np.sqrt(max(q - s * s / n, 0.0) / (n - 1)) if n > 1 else np.nan  # ddof=1, as NannyML
        se = std / np.sqrt(n)
        return {"value": mean, "sampling_error": se, "upper_cb": mean + 3 * se, "lower_cb": max(mean - 3 * se, 0.0)}


def stream_windows(model: FrozenReconstruction, df: pd.DataFrame, rng: np.random.Generator) -> list[dict]:
    n = len(df)
    sums = BucketSums(-(-n // BUCKET))
    start = 0
    while start < n:  # ingest in batches of random size, crossing bucket boundaries
        stop = min(n, start + int(rng.integers(1, 700)))
        sums.add(np.arange(start, stop) // BUCKET, model.row_errors(df.iloc[start:stop]))
        start = stop
    per_window = CHUNK // BUCKET
    n_windows = -(-n // CHUNK)  # a trailing partial window is kept, as NannyML's size chunker does
    return [sums.window(w * per_window, (w + 1) * per_window) for w in range(n_windows)]


def thresholds(ref_values: np.ndarray, sigma: float = SIGMA):
    mean, sd = np.nanmean(ref_values), np.nanstd(ref_values)  # ddof=0
    lower, upper = mean - sigma * sd, mean + sigma * sd
    return (None if lower <= 0 else lower), upper  # a lower threshold at or below 0 is dropped (None)


def alert(value: float, lower, upper) -> bool:
    lo = -np.inf if lower is None else lower
    hi = np.inf if upper is None else upper
    return not (lo < value < hi)  # on the threshold counts as an alert


# -------------------------------------------------------------------------------------------------- reporting


def ks_table(reference: pd.DataFrame, analysis: pd.DataFrame, numeric: list[str]):
    rows = []
    for i in range(len(analysis) // CHUNK):
        chunk = analysis.iloc[i * CHUNK : (i + 1) * CHUNK]
        stats = {}
        for c in numeric:
            r = ks_2samp(reference[c].dropna().to_numpy(), chunk[c].dropna().to_numpy())
            stats[c] = (r.statistic, r.pvalue)
        rows.append(stats)
    return rows


def fmt_thr(x) -> str:
    return "None" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.6f}"


def run_variant(name: str, categorical: bool, seed: int) -> float:
    print(f"\n=== variant {name} ===")
    reference, analysis = make_data(categorical, seed)
    columns = list(reference.columns)
    numeric = [c for c in columns if c.startswith("f")]

    t0 = time.perf_counter()
    calc, nml = run_nannyml(reference, analysis, columns)
    t_nml = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = FrozenReconstruction(reference, columns)
    rng = np.random.default_rng(seed + 1)
    ref_w = stream_windows(model, reference, rng)
    ana_w = stream_windows(model, analysis, rng)
    lower, upper = thresholds(np.array([w["value"] for w in ref_w]))
    t_mine = time.perf_counter() - t0

    pca = calc._pca
    print(
        f"columns: {columns}\nNannyML: continuous={calc.continuous_column_names} "
        f"categorical={calc.categorical_column_names}; PCA solver={pca._fit_svd_solver!r}, "
        f"n_components_={pca.n_components_}, explained={pca.explained_variance_ratio_.sum():.4f}; "
        f"mine: k={model.k}, explained={model.explained:.4f}"
    )
    nml_ref, nml_ana = nml[nml.period == "reference"], nml[nml.period == "analysis"]
    nml_lower, nml_upper = nml_ana.lower_threshold.iloc[0], nml_ana.upper_threshold.iloc[0]
    print(f"thresholds  NannyML: lower={fmt_thr(nml_lower)} upper={fmt_thr(nml_upper)}")
    print(f"            mine:    lower={fmt_thr(lower)} upper={fmt_thr(upper)}")
    print(
        f"            calc.lower_threshold_value={calc.lower_threshold_value!r} "
        f"calc.upper_threshold_value={calc.upper_threshold_value!r}"
    )

    diffs, se_diffs, cb_diffs, alert_mismatch = [], [], [], 0
    for tbl, wins in ((nml_ref, ref_w), (nml_ana, ana_w)):
        assert len(tbl) == len(wins), (len(tbl), len(wins))
        for (_, r), w in zip(tbl.iterrows(), wins):
            diffs.append(abs(r.value - w["value"]))
            se_diffs.append(abs(r.sampling_error - w["sampling_error"]))
            cb_diffs.append(max(abs(r.upper_cb - w["upper_cb"]), abs(r.lower_cb - w["lower_cb"])))
            alert_mismatch += int(bool(r.alert) != alert(w["value"], lower, upper))
    thr_diff = max(
        abs(nml_ana.upper_threshold.iloc[0] - upper),
        0.0 if lower is None else abs(nml_ana.lower_threshold.iloc[0] - lower),
    )

    ks = ks_table(reference, analysis, numeric)
    print(
        f"reference chunks (NannyML values): {', '.join(f'{v:.4f}' for v in nml_ref.value)}\n"
        f"\n{'chunk':>5} {'scenario':<12} {'NannyML':>9} {'mine':>9} {'|diff|':>8} {'alert N/m':>9}"
        f"  {'KS max (feature)':>17} {'KS f0':>6} {'KS f1':>6} {'min p':>8} {'#p<.01':>6}"
    )
    for i, ((_, r), w) in enumerate(zip(nml_ana.iterrows(), ana_w)):
        st = ks[i]
        worst = max(st, key=lambda c: st[c][0])
        minp = min(p for _, p in st.values())
        n_sig = sum(p < 0.01 for _, p in st.values())
        mine_alert = alert(w["value"], lower, upper)
        flags = f"{'A' if r.alert else '.'}/{'A' if mine_alert else '.'}"
        print(
            f"{i:>5} {SCENARIOS[i]:<12} {r.value:>9.5f} {w['value']:>9.5f} {abs(r.value - w['value']):>8.1e} {flags:>9}"
            f"  {st[worst][0]:>10.4f} ({worst:>3}) {st['f0'][0]:>6.4f} {st['f1'][0]:>6.4f} {minp:>8.1e} {n_sig:>6}"
        )
    ks_crit = 1.628 * np.sqrt((N_REF + CHUNK) / (N_REF * CHUNK))  # two-sided KS critical value at alpha=0.01
    print(
        f"\nmax |diff| over {len(diffs)} chunks (reference + analysis): value {max(diffs):.2e}, "
        f"sampling_error {max(se_diffs):.2e}, confidence bounds {max(cb_diffs):.2e}; thresholds {thr_diff:.2e}; "
        f"alert flags differing: {alert_mismatch}\n"
        f"KS critical value at alpha=0.01 for n=2000 vs m=20000: {ks_crit:.4f}\n"
        f"time: NannyML fit+calculate {t_nml:.2f} s, streaming re-implementation {t_mine:.2f} s"
    )

    # determinism: a second NannyML run on the same frames gives bit-identical values
    _, nml2 = run_nannyml(reference, analysis, columns)
    print(f"second NannyML run bit-identical: {bool((nml2.value.to_numpy() == nml.value.to_numpy()).all())}")
    return max(max(diffs), thr_diff)


def quirks(seed: int):
    """Two threshold details that matter for mlmon: the partial reference chunk, and the dropped lower threshold."""
    from nannyml.thresholds import StandardDeviationThreshold

    print("\n=== threshold quirks ===")
    gen = Generator(np.random.default_rng(seed))
    reference = gen.frame(gen.latent(N_REF + 150, "same"), False)  # 10 full chunks + one of 150 rows
    analysis = gen.frame(gen.latent(4 * CHUNK, "same"), False)
    columns = list(reference.columns)
    calc, nml = run_nannyml(reference, analysis, columns)
    model = FrozenReconstruction(reference, columns)
    ref_w = stream_windows(model, reference, np.random.default_rng(seed + 1))
    vals = np.array([w["value"] for w in ref_w])
    with_partial = thresholds(vals)
    without_partial = thresholds(vals[:-1])
    print(
        f"reference of {len(reference)} rows -> NannyML reference chunks: {int((nml.period == 'reference').sum())} "
        f"(last has 150 rows; its value {vals[-1]:.4f})\n"
        f"  NannyML thresholds:            lower={fmt_thr(calc.lower_threshold_value)} "
        f"upper={fmt_thr(calc.upper_threshold_value)}\n"
        f"  mine, with the partial chunk:  lower={fmt_thr(with_partial[0])} upper={fmt_thr(with_partial[1])}\n"
        f"  mine, without it:              lower={fmt_thr(without_partial[0])} upper={fmt_thr(without_partial[1])}"
    )
    calc2, nml2 = run_nannyml(
        reference, analysis, columns, threshold=StandardDeviationThreshold(std_lower_multiplier=500)
    )
    print(
        f"std_lower_multiplier=500 -> lower threshold below 0 -> calc.lower_threshold_value="
        f"{calc2.lower_threshold_value!r} (column in results: {nml2.lower_threshold.iloc[-1]!r}); "
        f"alerts then only above upper={calc2.upper_threshold_value:.6f}"
    )


def main():
    logging.disable(logging.WARNING)  # NannyML logs a warning per overridden threshold and per small chunk count
    import nannyml
    import sklearn

    print(
        f"nannyml {nannyml.__version__}, scikit-learn {sklearn.__version__}, "
        f"numpy {np.__version__}, pandas {pd.__version__}"
    )
    t0 = time.perf_counter()
    worst_a = run_variant("A: 10 numeric features", categorical=False, seed=SEED)
    worst_b = run_variant(
        "B: + cat_a (4 cats, 2% missing), cat_b (3 cats), 5% missing in f3 and f7", categorical=True, seed=SEED
    )
    quirks(SEED + 7)
    print(
        f"\nworst |NannyML - mine| (values and thresholds): A {worst_a:.2e}, B {worst_b:.2e}; "
        f"total {time.perf_counter() - t0:.1f} s"
    )


if __name__ == "__main__":
    main()
