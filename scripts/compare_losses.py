"""What the regression losses are for: MSE, MAE and Huber trained on data whose training targets hold outliers.

    python scripts/compare_losses.py                         # writes losses.png in the current directory
    python scripts/compare_losses.py --shares 0 0.1 0.25 0.4 --plot /tmp/losses.png --seeds 0 1 2 3 4

Data: y = sin(2x) + x/2 + N(0, 0.1^2) with x uniform in [-3, 3], n = 600, 25% held out. In the training rows only, a
share of the targets (0%, 10%, 25%) gets ``--outlier-offset`` (+8) added: one-sided gross errors, as from a broken
sensor. The held-out rows stay clean, so the test error says how well each loss recovered the clean relation.

The same network (1-64-64-1, tanh hidden layers, linear output), optimizer (Adam lr 3e-3), full-batch epochs (2000)
and seed are trained with MSE, MAE and Huber at deltas 0.3, 1 and 3. Reported per outlier share: clean test RMSE
and MAE (mean ± sample std over ``--seeds``; the noise alone gives RMSE 0.1) and the fit time (median). A second
table lists |dL/dpred| for one prediction at residuals 0.1, 1 and 10 (``loss.grad`` on a 1x1 array), which is how
hard one point pulls on the fit: MSE's pull grows with the residual (2r), MAE's is constant (1), Huber's grows like
MSE's /2 up to delta and stays at delta beyond. The figure (``--plot``) shows, per outlier share, the training points
(outliers marked), the clean truth and each loss's fitted curve (first seed). The closing lines are computed from the
tables.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from dataclasses import dataclass

import numpy as np

import gpunet as gn

LOSSES = {  # label -> factory; new objects for every fit
    "MSE": gn.losses.MSE,
    "MAE": gn.losses.MAE,
    "Huber(0.3)": lambda: gn.losses.Huber(delta=0.3),
    "Huber(1)": lambda: gn.losses.Huber(delta=1.0),
    "Huber(3)": lambda: gn.losses.Huber(delta=3.0),
}
RESIDUALS = (0.1, 1.0, 10.0)


def truth(x: np.ndarray) -> np.ndarray:
    return np.sin(2 * x) + x / 2


@dataclass
class Problem:
    x_train: np.ndarray  # (n_train, 1)
    y_train: np.ndarray  # (n_train,) clean targets (noise, no outliers)
    x_test: np.ndarray
    y_test: np.ndarray
    outlier_order: np.ndarray  # training rows in the order they become outliers: shares nest (10% within 25%)


def make_problem(n: int, noise: float, test_fraction: float, seed: int) -> Problem:
    rng = np.random.default_rng(seed)
    x = rng.uniform(-3, 3, n)
    y = truth(x) + rng.normal(0, noise, n)
    n_test = int(round(n * test_fraction))
    n_train = n - n_test
    return Problem(x[:n_train, None], y[:n_train], x[n_train:, None], y[n_train:], rng.permutation(n_train))


def corrupt(problem: Problem, share: float, offset: float) -> tuple[np.ndarray, np.ndarray]:
    """The training targets with ``round(share * n_train)`` outliers (``y + offset``), and the outlier mask."""
    n_train = problem.y_train.shape[0]
    mask = np.zeros(n_train, dtype=bool)
    mask[problem.outlier_order[:int(round(share * n_train))]] = True
    return np.where(mask, problem.y_train + offset, problem.y_train), mask


def build_model(args, seed: int) -> gn.Sequential:
    sizes = (1, *args.hidden)
    layers = [gn.Dense(a, b, args.activation) for a, b in zip(sizes[:-1], sizes[1:])]
    return gn.Sequential([*layers, gn.Dense(sizes[-1], 1)], device=args.device, seed=seed)


def train(args, x: np.ndarray, y: np.ndarray, loss_label: str, seed: int) -> tuple[gn.Sequential, float]:
    model = build_model(args, seed)
    start = time.perf_counter()
    model.fit(x, y, loss=LOSSES[loss_label](), optimizer=gn.optim.Adam(lr=args.lr), epochs=args.epochs,
              batch_size=args.batch_size)
    return model, time.perf_counter() - start


def predict(model: gn.Sequential, x: np.ndarray) -> np.ndarray:
    return gn.to_numpy(model.predict(x))[:, 0]


def clean_errors(model: gn.Sequential, problem: Problem) -> tuple[float, float]:
    r = predict(model, problem.x_test) - problem.y_test
    return float(np.sqrt(np.mean(r**2))), float(np.mean(np.abs(r)))


# -- experiment -----------------------------------------------------------------------------------------------------
def run_grid(args, problem: Problem):
    """Every (share, loss, seed): records of clean errors and fit time, plus the first seed's fitted curves."""
    grid = np.linspace(-3, 3, 400)[:, None]
    records, curves = [], {}
    for share in args.shares:
        y_train, _ = corrupt(problem, share, args.outlier_offset)
        for label in LOSSES:
            for i, seed in enumerate(args.seeds):
                model, seconds = train(args, problem.x_train, y_train, label, seed)
                rmse, mae = clean_errors(model, problem)
                records.append({"share": share, "loss": label, "seed": seed, "rmse": rmse, "mae": mae,
                                "seconds": seconds})
                if i == 0:
                    curves[share, label] = predict(model, grid)
            last = records[-len(args.seeds):]
            print(f"  outliers {share:>4.0%}  {label:<11} clean RMSE "
                  f"{statistics.fmean(r['rmse'] for r in last):.4f}", flush=True)
    return records, grid[:, 0], curves


def summarise(records: list[dict]) -> list[dict]:
    rows = []
    for share in dict.fromkeys(r["share"] for r in records):
        for label in LOSSES:
            runs = [r for r in records if r["share"] == share and r["loss"] == label]
            row = {"share": share, "loss": label, "seconds": statistics.median(r["seconds"] for r in runs)}
            for key in ("rmse", "mae"):
                values = [r[key] for r in runs]
                row[key] = statistics.fmean(values)
                row[key + "_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
            rows.append(row)
    return rows


def gradient_magnitudes(residuals=RESIDUALS) -> dict[str, list[float]]:
    """|dL/dpred| of each loss for one prediction (1x1 array) at each residual ``pred - target``."""
    return {label: [float(abs(factory().grad(np.array([[r]]), np.array([[0.0]]))[0, 0])) for r in residuals]
            for label, factory in LOSSES.items()}


# -- reporting ------------------------------------------------------------------------------------------------------
def error_tables(rows: list[dict], n_seeds: int) -> str:
    blocks = []
    for share in dict.fromkeys(r["share"] for r in rows):
        lines = [f"outliers in {share:.0%} of the training targets:", "",
                 f"| loss | clean test RMSE (mean ± std, {n_seeds} seeds) | clean test MAE | fit time (s, median) |",
                 "|---|---|---|---|"]
        subset = [r for r in rows if r["share"] == share]
        best = min(r["rmse"] for r in subset)
        for r in subset:
            mark = " (best)" if r["rmse"] == best else ""
            lines.append(f"| {r['loss']} | {r['rmse']:.4f} ± {r['rmse_std']:.4f}{mark} | "
                         f"{r['mae']:.4f} ± {r['mae_std']:.4f} | {r['seconds']:.3f} |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def gradient_table(grads: dict[str, list[float]]) -> str:
    lines = ["| loss | " + " | ".join(f"\\|dL/dpred\\| at r = {r:g}" for r in RESIDUALS) + " | growth r=0.1 -> 10 |",
             "|---|" + "---|" * (len(RESIDUALS) + 1)]
    for label, values in grads.items():
        lines.append(f"| {label} | " + " | ".join(f"{v:g}" for v in values) + f" | {values[-1] / values[0]:g}x |")
    return "\n".join(lines)


def conclusions(rows: list[dict], grads: dict[str, list[float]], offset: float, floor: float) -> list[str]:
    """Plain-language lines computed from the summary rows, the gradient table and the noise floor (the clean
    test targets' RMSE around the truth)."""
    shares = list(dict.fromkeys(r["share"] for r in rows))
    by = {(r["share"], r["loss"]): r for r in rows}
    best = {share: min((r for r in rows if r["share"] == share), key=lambda r: r["rmse"]) for share in shares}

    def versus_mse(share):
        b, mse = best[share], by[share, "MSE"]["rmse"]
        if b["loss"] == "MSE":
            return f"{share:.0%}: MSE {mse:.3f}"
        gap = f"within {mse / b['rmse'] - 1:.0%}" if mse / b["rmse"] < 1.05 else f"{mse / b['rmse']:.1f}x higher"
        return f"{share:.0%}: {b['loss']} {b['rmse']:.3f} (MSE {mse:.3f}, {gap})"

    lines = ["- Lowest clean RMSE per outlier share: " + "; ".join(map(versus_mse, shares)) + "."]
    clean, worst = shares[0], shares[-1]
    rmses = [by[clean, label]["rmse"] for label in LOSSES]
    spread = max(rmses) / min(rmses) - 1
    lines.append(f"- With {clean:.0%} outliers every loss reached RMSE {min(rmses):.3f}-{max(rmses):.3f} "
                 f"(the noise alone gives {floor:.3f}), {spread:.0%} apart: "
                 + ("on clean targets the choice of loss hardly matters." if spread < 0.1 else
                    "the losses differ even on these targets."))
    if len(shares) > 1:
        growth = {label: by[worst, label]["rmse"] / by[clean, label]["rmse"] for label in LOSSES}
        most, least = max(growth, key=growth.get), min(growth, key=growth.get)
        hubers = sorted((label for label in LOSSES if label.startswith("Huber")),
                        key=lambda label: LOSSES[label]().delta)
        order = [by[worst, label]["rmse"] for label in hubers]
        trend = ("the smaller delta, the lower the error" if order == sorted(order) else
                 "the larger delta, the lower the error" if order == sorted(order, reverse=True) else
                 "the error is not monotone in delta")
        lines.append(f"- From {clean:.0%} to {worst:.0%} outliers the clean RMSE grew {growth[most]:.1f}x with {most}, "
                     f"{growth[least]:.1f}x with {least}; for Huber at {worst:.0%}, delta "
                     f"{', '.join(h[6:-1] for h in hubers)} gave {', '.join(f'{v:.3f}' for v in order)}: {trend}.")
    growth = {label: values[-1] / values[0] for label, values in grads.items()}
    lines.append(f"- Why: under each loss an outlier at residual {RESIDUALS[-1]:g} (+{offset:g} sits about that far "
                 f"from a good fit) pulls on the fit " + ", ".join(f"{g:g}x" for g in growth.values())
                 + f" as hard as a clean point at residual {RESIDUALS[0]:g} ({', '.join(growth)}): MSE fits the "
                 f"mean, which outliers drag; MAE the median, which they barely move; Huber caps an outlier's pull "
                 f"at delta.")
    return lines


def plot(path: str, problem: Problem, args, grid: np.ndarray, curves: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(args.shares), figsize=(5 * len(args.shares), 4.2), sharey=True, squeeze=False)
    for ax, share in zip(axes[0], args.shares):
        y_train, mask = corrupt(problem, share, args.outlier_offset)
        x = problem.x_train[:, 0]
        ax.scatter(x[~mask], y_train[~mask], s=6, c="0.7", label="training points")
        ax.scatter(x[mask], y_train[mask], s=14, c="tab:red", marker="x", label="outliers (training only)")
        ax.plot(grid, truth(grid), "k--", lw=1.5, label="clean truth")
        for label in LOSSES:
            ax.plot(grid, curves[share, label], lw=1.3, label=label)
        ax.set_title(f"{share:.0%} outliers (+{args.outlier_offset:g})")
        ax.set_xlabel("x")
        ax.set_ylim(-3.5, max(4.0, args.outlier_offset + 2.5))
    axes[0][0].set_ylabel("y")
    axes[0][0].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"gpunet {'-'.join(map(str, (1, *args.hidden, 1)))} {args.activation}, Adam lr {args.lr:g}, "
                 f"{args.epochs} epochs, seed {args.seeds[0]}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=600, help="points drawn (default 600)")
    parser.add_argument("--test-fraction", type=float, default=0.25)
    parser.add_argument("--noise", type=float, default=0.1)
    parser.add_argument("--shares", type=float, nargs="+", default=[0.0, 0.1, 0.25],
                        help="outlier shares of the training targets")
    parser.add_argument("--outlier-offset", type=float, default=8.0)
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 64])
    parser.add_argument("--activation", default="tanh")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--epochs", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=None, help="default: full batch")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="model seeds (init)")
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu | auto | cuda | cuda:N (default: cpu)")
    parser.add_argument("--threads", type=int, default=1,
                        help="NumPy/BLAS threads (default 1: the matrices are tiny, and a busy machine makes "
                             "multi-threaded BLAS stall)")
    parser.add_argument("--plot", default="losses.png", help="PNG to write (default: losses.png here)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    from threadpoolctl import threadpool_limits

    problem = make_problem(args.n, args.noise, args.test_fraction, args.data_seed)
    with threadpool_limits(args.threads):
        records, grid, curves = run_grid(args, problem)
    rows = summarise(records)
    grads = gradient_magnitudes()
    plot(args.plot, problem, args, grid, curves)

    print(f"\n{shlex.join(['python', 'scripts/compare_losses.py', *argv])}\n")
    print(f"y = sin(2x) + x/2 + N(0, {args.noise:g}^2), x ~ U[-3, 3], {problem.x_train.shape[0]} training / "
          f"{problem.x_test.shape[0]} clean test points; outliers: y + {args.outlier_offset:g} in the training "
          f"targets; {'-'.join(map(str, (1, *args.hidden, 1)))} {args.activation}, Adam(lr={args.lr:g}), "
          f"{args.epochs} epochs, batch {args.batch_size or 'full'}, seeds {args.seeds}, {args.threads} thread(s), "
          f"1-min load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs\n")
    print(error_tables(rows, len(args.seeds)))
    print("\nHow hard one point pulls on the fit: |dL/dpred| for a single prediction with residual r = pred - target\n")
    print(gradient_table(grads))
    floor = float(np.sqrt(np.mean((problem.y_test - truth(problem.x_test[:, 0])) ** 2)))
    print("\n" + "\n".join(conclusions(rows, grads, args.outlier_offset, floor)))
    print(f"\nfigure: {os.path.abspath(args.plot)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
