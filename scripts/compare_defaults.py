"""The command line's default recipe against scikit-learn's defaults on held-out rows of several data sets.

    python scripts/compare_defaults.py --threads 2                  # every data set found, 3 seeds
    python scripts/compare_defaults.py --datasets diabetes,penguins_mass --seeds 0,1 --set lr=3e-3 --no-baselines

For each data set and seed: a stratified (classification) 75/25 split of the rows with a target, made exactly as
``gpunet train`` makes its test split (``gpunet.data.split``). gpunet trains on the 75% with the command line's
recipe (``TableModel.train``, what ``gpunet train --dataset csv:train.csv:TARGET --test-split 0`` runs) and is
scored on the 25% (what ``gpunet evaluate`` reports). The baselines see the same rows, encoded by the same
:class:`gpunet.tabular.TableTransform` fitted on the 75% (so every model gets the same features): RidgeCV or
LogisticRegression, HistGradientBoosting, and scikit-learn's MLP, each with scikit-learn's defaults
(``max_iter=1000`` for LogisticRegression and the MLP, so that they converge). Scores: R2 (regression) or accuracy.

Data sets: scikit-learn's bundled diabetes, breast_cancer, wine, iris, digits; tables shipped inside PyPI packages
when installed (``pip install palmerpenguins vega_datasets``): penguins (species; body mass), penguins-raw (species,
from the raw table with its text, dates, IDs and comments), cars (miles per gallon; the car's name, blanks, a date),
seattle-weather (the weather from dates and measurements).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
import warnings

import numpy as np

import gpunet as gn
from gpunet import data as data_mod
from gpunet.recipe import Recipe, TableModel
from gpunet.tabular import TableTransform, TargetTransform


def _package_file(package: str, *parts: str):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent.joinpath(*parts)
    return path if path.is_file() else None


def datasets() -> dict:
    """``{name: (pandas DataFrame, target column)}`` of every data set available offline."""
    import pandas as pd

    out = {}
    for name in data_mod.BUNDLED:
        table = data_mod.load(name)
        out[name] = (table.frame, table.target)
    penguins = _package_file("palmerpenguins", "data", "penguins.csv")
    if penguins:
        frame, _ = data_mod.read_table(penguins)
        out["penguins"] = (frame, "species")
        out["penguins_mass"] = (frame, "body_mass_g")
    raw = _package_file("palmerpenguins", "data", "penguins-raw.csv")
    if raw:
        out["penguins_raw"] = (data_mod.read_table(raw)[0], "Species")
    cars = _package_file("vega_datasets", "_data", "cars.json")
    if cars:
        out["cars_mpg"] = (pd.read_json(cars), "Miles_per_Gallon")
    weather = _package_file("vega_datasets", "_data", "seattle-weather.csv")
    if weather:
        out["seattle_weather"] = (data_mod.read_table(weather)[0], "weather")
    return out


def split(frame, target: str, seed: int):
    present = TargetTransform.present(frame[target])
    frame = frame[present].reset_index(drop=True)
    t = TargetTransform(target).fit(frame[target])
    strata = None if t.task == "regression" else t.labels(frame[target])
    train, test = data_mod.split(len(frame), 0.25, strata, seed, "test split")
    return frame.iloc[train].reset_index(drop=True), frame.iloc[test].reset_index(drop=True), t.task


def score_gpunet(train, test, target, seed, recipe):
    start = time.perf_counter()
    tm, history, _ = TableModel.train(train, target, recipe=recipe, device="cpu", seed=seed)
    seconds = time.perf_counter() - start
    s = tm.score(test)
    return (s["r2"] if tm.target.task == "regression" else s["accuracy"]), seconds, len(history.epoch)


def score_baselines(train, test, target, task, seed) -> dict:
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.linear_model import LogisticRegression, RidgeCV
    from sklearn.metrics import accuracy_score, r2_score
    from sklearn.neural_network import MLPClassifier, MLPRegressor

    columns = TableTransform().fit(train.drop(columns=[target]))
    X_train, X_test = columns.transform(train, expected=[target]), columns.transform(test, expected=[target])
    t = TargetTransform(target).fit(train[target], task)
    y_train, y_test = t.labels(train[target]), t.labels(test[target])
    if task == "regression":
        models = {"linear": RidgeCV(), "hgb": HistGradientBoostingRegressor(random_state=seed),
                  "mlp": MLPRegressor(random_state=seed, max_iter=1000)}
        metric = r2_score
    else:
        models = {"linear": LogisticRegression(max_iter=1000), "hgb": HistGradientBoostingClassifier(random_state=seed),
                  "mlp": MLPClassifier(random_state=seed, max_iter=1000)}
        metric = accuracy_score
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, model in models.items():
            out[name] = float(metric(y_test, model.fit(X_train, y_train).predict(X_test)))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", help="comma-separated names (default: all found)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="change a field of the recipe (e.g. lr=3e-3, hidden=256,256); repeatable")
    parser.add_argument("--no-baselines", action="store_true", help="gpunet only (faster when trying recipes)")
    parser.add_argument("--json", help="also write the raw scores here")
    args = parser.parse_args(argv)
    from threadpoolctl import threadpool_limits

    recipe = Recipe()
    types = {f.name: f.type for f in dataclasses.fields(Recipe)}
    for item in args.set:
        key, _, value = item.partition("=")
        current = getattr(recipe, key)
        if isinstance(current, tuple):
            parsed = tuple(int(v) for v in value.split(",") if v)
        elif value == "None":
            parsed = None
        elif isinstance(current, str) or types[key] == "str":
            parsed = value
        elif isinstance(current, int) and not isinstance(current, bool):
            parsed = int(value)
        else:
            parsed = float(value)
        recipe = dataclasses.replace(recipe, **{key: parsed})
    seeds = [int(s) for s in args.seeds.split(",")]
    available = datasets()
    names = args.datasets.split(",") if args.datasets else list(available)
    print(f"recipe: {recipe}")
    rows, raw = [], {}
    with threadpool_limits(args.threads):
        for name in names:
            frame, target = available[name]
            scores = {"gpunet": [], "linear": [], "hgb": [], "mlp": []}
            seconds, epochs, task = [], [], None
            for seed in seeds:
                train, test, task = split(frame, target, seed)
                value, sec, ep = score_gpunet(train, test, target, seed, recipe)
                scores["gpunet"].append(value)
                seconds.append(sec)
                epochs.append(ep)
                if not args.no_baselines:
                    for key, v in score_baselines(train, test, target, task, seed).items():
                        scores[key].append(v)
            means = {k: float(np.mean(v)) for k, v in scores.items() if v}
            best = max((k for k in means if k != "gpunet"), key=means.get, default=None)
            raw[name] = {"task": task, "scores": scores, "seconds": seconds, "epochs": epochs}
            gap = "" if best is None else f"{means['gpunet'] - means[best]:+.3f}"
            rows.append((name, task, len(frame), means, gap, float(np.median(seconds)), float(np.mean(epochs))))
            print(f"{name:16} {task:10} gpunet {means['gpunet']:.4f} ± {np.std(scores['gpunet']):.4f} "
                  + " ".join(f"{k} {means[k]:.4f}" for k in ("linear", "hgb", "mlp") if k in means)
                  + f"  gap {gap}  {np.median(seconds):.2f} s, {np.mean(epochs):.0f} epochs", flush=True)
    metric = {"regression": "R2", "binary": "accuracy", "multiclass": "accuracy"}
    print()
    print("| data set | rows | metric | gpunet (defaults) | linear | HistGradientBoosting | sklearn MLP | gpunet - best |"
          " gpunet fit (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, task, n, means, gap, sec, ep in rows:
        cells = [f"{means[k]:.4f}" if k in means else "-" for k in ("gpunet", "linear", "hgb", "mlp")]
        print(f"| {name} | {n} | {metric[task]} | " + " | ".join(cells) + f" | {gap} | {sec:.2f} |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"recipe": dataclasses.asdict(recipe), "seeds": seeds, "results": raw}, handle, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
