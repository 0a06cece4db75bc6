"""gpunet, scikit-learn's MLPClassifier and PyTorch on real data sets, same network and recipe, side by side.

    python scripts/compare_real_data.py                      # digits and breast_cancer, seeds 0 1 2, 2 threads
    python scripts/compare_real_data.py --device auto --json results.json

What it measures: test accuracy (mean ± sample std over seeds) and wall-clock fit time (median over seeds) of one
recipe trained by three libraries on scikit-learn's digits (10 classes) and breast_cancer (2 classes).

Recipe, the same for all three: stratified 75/25 split (random_state=0), StandardScaler fitted on the training rows,
hidden layers (128, 64) with ReLU, Adam(lr=1e-3, betas (0.9, 0.999), eps 1e-8), no weight decay, batch 32 reshuffled
every epoch, a fixed number of epochs with no early stopping (every library does the same number of updates).
Outputs: softmax + categorical cross-entropy for digits (torch: linear logits + CrossEntropyLoss); for the binary
breast_cancer one sigmoid output + binary cross-entropy (torch: one logit + BCEWithLogitsLoss; scikit-learn: its
logistic output). Each library uses its own initialisation (gpunet: He uniform for ReLU layers, Glorot uniform for
the output; torch: its Linear default; scikit-learn: Glorot) seeded with the run's seed, and its own shuffling
order. "fit time" covers fit alone (data checks and transfers inside it included, prediction excluded), after one
untimed one-epoch warm-up fit per library and data set; all libraries are pinned to ``--threads`` threads.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
import warnings
from dataclasses import dataclass

import numpy as np

import gpunet as gn

HIDDEN = (128, 64)
DATASETS = ("digits", "breast_cancer")
LIBRARIES = ("gpunet", "sklearn", "torch")


@dataclass
class Task:
    """One data set, split and scaled, with the number of epochs to train on it."""

    name: str
    X_train: np.ndarray
    X_test: np.ndarray
    y_train: np.ndarray
    y_test: np.ndarray
    n_classes: int
    epochs: int

    @property
    def binary(self) -> bool:
        return self.n_classes == 2

    @property
    def n_features(self) -> int:
        return self.X_train.shape[1]


@dataclass
class Recipe:
    lr: float
    batch_size: int


# -- data -----------------------------------------------------------------------------------------------------------
def load_task(name: str, epochs: int) -> Task:
    """A stratified 75/25 split (random_state=0) of a scikit-learn data set, standardised on the training rows."""
    from sklearn import datasets
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    X, y = getattr(datasets, f"load_{name}")(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)
    scaler = StandardScaler().fit(X_train)
    return Task(name, scaler.transform(X_train).astype(np.float32), scaler.transform(X_test).astype(np.float32),
                y_train.astype(np.int64), y_test.astype(np.int64), int(len(np.unique(y))), epochs)


def accuracy(scores: np.ndarray, y: np.ndarray, binary: bool, threshold: float = 0.5) -> float:
    """Accuracy of ``(n, k)`` class scores; when ``binary``, one column compared with ``threshold`` (0.5 for
    probabilities, 0 for logits)."""
    scores = np.asarray(scores)
    if binary:
        labels = (scores[:, 0] > threshold).astype(np.int64)
    else:
        labels = np.argmax(scores, axis=1)
    return float(np.mean(labels == y))


# -- one training per library: (fit seconds, test accuracy) ----------------------------------------------------------
def run_gpunet(task: Task, recipe: Recipe, seed: int, epochs: int, device: str) -> tuple[float, float]:
    sizes = (task.n_features, *HIDDEN)
    layers = [gn.Dense(a, b, "relu") for a, b in zip(sizes[:-1], sizes[1:])]
    if task.binary:
        layers.append(gn.Dense(HIDDEN[-1], 1, "sigmoid"))
        loss = "bce"
    else:
        layers.append(gn.Dense(HIDDEN[-1], task.n_classes, "softmax"))
        loss = "cce"
    model = gn.Sequential(layers, device=device, seed=seed)
    start = time.perf_counter()
    model.fit(task.X_train, task.y_train, loss=loss, optimizer=gn.optim.Adam(lr=recipe.lr), epochs=epochs,
              batch_size=recipe.batch_size, shuffle=True)
    seconds = time.perf_counter() - start  # fit reads the epoch's loss from the device: the work is done here
    return seconds, accuracy(gn.to_numpy(model.predict(task.X_test)), task.y_test, task.binary)


def run_sklearn(task: Task, recipe: Recipe, seed: int, epochs: int, device: str) -> tuple[float, float]:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    clf = MLPClassifier(hidden_layer_sizes=HIDDEN, activation="relu", solver="adam", learning_rate_init=recipe.lr,
                        batch_size=recipe.batch_size, max_iter=epochs, alpha=0.0, shuffle=True, tol=0.0,
                        n_iter_no_change=epochs + 1, random_state=seed)
    start = time.perf_counter()
    with warnings.catch_warnings():  # "max_iter reached": wanted, every library runs exactly `epochs` epochs
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(task.X_train, task.y_train)
    seconds = time.perf_counter() - start
    assert clf.n_iter_ == epochs, f"scikit-learn stopped after {clf.n_iter_} of {epochs} epochs"
    return seconds, float(np.mean(clf.predict(task.X_test) == task.y_test))


def run_torch(task: Task, recipe: Recipe, seed: int, epochs: int, device: str) -> tuple[float, float]:
    """Idiomatic PyTorch: Linear/ReLU stack with linear logits, CrossEntropyLoss or BCEWithLogitsLoss, index
    batching from a seeded NumPy permutation per epoch."""
    import torch

    torch.manual_seed(seed)
    sizes = (task.n_features, *HIDDEN)
    modules = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        modules += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    modules.append(torch.nn.Linear(HIDDEN[-1], 1 if task.binary else task.n_classes))
    net = torch.nn.Sequential(*modules).to(device)
    loss_fn = torch.nn.BCEWithLogitsLoss() if task.binary else torch.nn.CrossEntropyLoss()
    opt = torch.optim.Adam(net.parameters(), lr=recipe.lr)
    rng = np.random.default_rng(seed)

    start = time.perf_counter()
    X = torch.as_tensor(task.X_train, device=device)
    y = torch.as_tensor(task.y_train, device=device)
    y = y.to(torch.float32).reshape(-1, 1) if task.binary else y
    n = X.shape[0]
    for _ in range(epochs):
        order = torch.as_tensor(rng.permutation(n), device=device)
        for i in range(0, n, recipe.batch_size):
            rows = order[i:i + recipe.batch_size]
            opt.zero_grad(set_to_none=True)
            loss_fn(net(X[rows]), y[rows]).backward()
            opt.step()
    if device != "cpu":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    with torch.no_grad():
        logits = net(torch.as_tensor(task.X_test, device=device)).cpu().numpy()
    return seconds, accuracy(logits, task.y_test, task.binary, threshold=0.0)


RUNNERS = {"gpunet": run_gpunet, "sklearn": run_sklearn, "torch": run_torch}


def library_label(library: str, device: str) -> str:
    if library == "gpunet":
        return f"gpunet {gn.__version__} ({device})"
    if library == "sklearn":
        import sklearn

        return f"scikit-learn {sklearn.__version__} MLPClassifier (cpu)"
    import torch

    return f"torch {torch.__version__.split('+')[0]} ({device})"


# -- the comparison -------------------------------------------------------------------------------------------------
def resolve_devices(device: str) -> dict[str, str]:
    """The device each library runs on: gpunet's as asked (``"auto"`` resolved), torch on the GPU only when
    gpunet is, scikit-learn on the CPU."""
    gpunet_device = gn.get_backend(device).label
    torch_device = "cpu"
    if gpunet_device.startswith("cuda"):
        import torch

        torch_device = "cuda" if torch.cuda.is_available() else "cpu"
    return {"gpunet": gpunet_device, "sklearn": "cpu", "torch": torch_device}


def compare(tasks: list[Task], libraries: list[str], seeds: list[int], recipe: Recipe,
            devices: dict[str, str]) -> list[dict]:
    """One record per (data set, library, seed): ``{"dataset", "library", "seed", "accuracy", "fit_seconds"}``."""
    records = []
    for task in tasks:
        for library in libraries:
            run = RUNNERS[library]
            run(task, recipe, seeds[0], 1, devices[library])  # warm-up: imports, allocators, first-call paths
            for seed in seeds:
                seconds, acc = run(task, recipe, seed, task.epochs, devices[library])
                records.append({"dataset": task.name, "library": library, "seed": seed, "accuracy": acc,
                                "fit_seconds": seconds})
                print(f"  {task.name:<14}{library:<8} seed {seed}: accuracy {acc:.4f}, fit {seconds:.3f} s",
                      flush=True)
    return records


def summarise(records: list[dict], tasks: list[Task], libraries: list[str]) -> list[dict]:
    """Per (data set, library): mean and sample std of accuracy, median fit time, time relative to gpunet."""
    rows = []
    for task in tasks:
        medians = {}
        for library in libraries:
            runs = [r for r in records if r["dataset"] == task.name and r["library"] == library]
            accs = [r["accuracy"] for r in runs]
            medians[library] = statistics.median(r["fit_seconds"] for r in runs)
            rows.append({"dataset": task.name, "library": library, "epochs": task.epochs,
                         "accuracy_mean": statistics.fmean(accs),
                         "accuracy_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                         "fit_seconds_median": medians[library]})
        for row in rows[-len(libraries):]:
            row["time_vs_gpunet"] = (row["fit_seconds_median"] / medians["gpunet"]) if "gpunet" in medians else None
    return rows


def markdown_table(rows: list[dict], devices: dict[str, str]) -> str:
    lines = ["| dataset | library | test accuracy (mean ± std over seeds) | fit time (s, median) | time / gpunet |",
             "|---|---|---|---|---|"]
    for row in rows:
        ratio = "n/a" if row["time_vs_gpunet"] is None else f"{row['time_vs_gpunet']:.2f}x"
        lines.append(f"| {row['dataset']} | {library_label(row['library'], devices[row['library']])} | "
                     f"{row['accuracy_mean']:.4f} ± {row['accuracy_std']:.4f} | {row['fit_seconds_median']:.3f} | "
                     f"{ratio} |")
    return "\n".join(lines)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument("--libraries", nargs="+", choices=LIBRARIES, default=list(LIBRARIES))
    parser.add_argument("--epochs-digits", type=int, default=60)
    parser.add_argument("--epochs-breast-cancer", type=int, default=60)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu", help="gpunet's device: cpu | auto | cuda | cuda:N (default: cpu)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for every library (default: 2)")
    parser.add_argument("--json", metavar="PATH", help="write the settings, every run and the summary here")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    recipe = Recipe(lr=args.lr, batch_size=args.batch_size)
    epochs = {"digits": args.epochs_digits, "breast_cancer": args.epochs_breast_cancer}
    tasks = [load_task(name, epochs[name]) for name in args.datasets]
    devices = resolve_devices(args.device)
    load_before = os.getloadavg()[0]
    with threadpool_limits(args.threads):
        records = compare(tasks, args.libraries, args.seeds, recipe, devices)
    load = (load_before, os.getloadavg()[0])
    rows = summarise(records, tasks, args.libraries)

    command = shlex.join(["python", "scripts/compare_real_data.py", *argv])
    print(f"\n{command}\n")
    print(f"hidden {HIDDEN} relu, Adam(lr={args.lr}), batch {args.batch_size}, no early stopping; epochs: "
          + ", ".join(f"{t.name} {t.epochs}" for t in tasks)
          + f"; seeds {args.seeds}; {args.threads} threads; StandardScaler, stratified 75/25 split (random_state=0); "
          f"1-min load average {load[0]:.2f} before, {load[1]:.2f} after on {os.cpu_count()} CPUs\n")
    if max(load) > os.cpu_count():
        print("warning: the machine was busy with other work: times are inflated and noisy, multi-threaded torch's "
              "most (its threads wait for each other); rerun on an idle machine, or compare with --threads 1\n")
    print(markdown_table(rows, devices))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": command, "settings": vars(args), "devices": devices, "load_average": load,
                       "hidden": list(HIDDEN), "runs": records, "summary": rows}, f, indent=2)
        print(f"\nraw numbers: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
