"""gpunet.sklearn against independent references: scikit-learn's own MLP code (its constructor, ``_backprop``,
``SGDOptimizer``, ``AdamOptimizer``, the stopping logic of ``_fit_stochastic`` / ``_update_no_improvement_count``,
whole training runs), ``torch.optim`` and hand computations. Everything in float64; small data, so the file runs in
a few seconds."""

import inspect
import itertools
import math
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn", minversion="1.6")

from sklearn import neural_network as sk_nn  # noqa: E402
from sklearn.datasets import load_iris  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.neural_network._stochastic_optimizers import AdamOptimizer, SGDOptimizer  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

import gpunet as gn  # noqa: E402
from gpunet import sklearn as gn_sk  # noqa: E402
from gpunet.sklearn import MLPClassifier, MLPRegressor  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

EXTRAS = {MLPClassifier: {"weight_decay", "device", "dtype", "class_weight"},
          MLPRegressor: {"weight_decay", "device", "dtype", "huber_delta"}}
PAIRS = [(sk_nn.MLPClassifier, MLPClassifier), (sk_nn.MLPRegressor, MLPRegressor)]


@pytest.fixture(scope="module")
def iris():
    X, y = load_iris(return_X_y=True)
    return StandardScaler().fit_transform(X), y


def max_difference(a, b) -> float:
    return max(float(np.max(np.abs(np.asarray(u) - np.asarray(v)))) for u, v in zip(a, b, strict=True))


# -- the constructor ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sk_class, gn_class", PAIRS)
def test_constructor_is_scikit_learns(sk_class, gn_class):
    """Every parameter of scikit-learn's class, in its order, with its default and kind (positional or keyword-only);
    gpunet's extras come after, keyword-only."""
    ours = inspect.signature(gn_class).parameters
    theirs = inspect.signature(sk_class).parameters
    assert list(ours)[:len(theirs)] == list(theirs)
    for name, p in theirs.items():
        assert ours[name].kind == p.kind, name
        assert type(ours[name].default) is type(p.default) and ours[name].default == p.default, name
    extras = {name: p for name, p in ours.items() if name not in theirs}
    assert set(extras) == EXTRAS[gn_class]
    assert all(p.kind is p.KEYWORD_ONLY for p in extras.values())
    assert set(sk_class().get_params()) | EXTRAS[gn_class] == set(gn_class().get_params())


def sklearn_script(MLPClassifier, MLPRegressor, X, y):
    """Code written for sklearn.neural_network, every constructor argument given; returns what it computed."""
    clf = MLPClassifier(
        hidden_layer_sizes=(8,), activation="tanh", solver="sgd", alpha=1e-3, batch_size=32, learning_rate="adaptive",
        learning_rate_init=0.05, power_t=0.5, max_iter=30, shuffle=True, random_state=0, tol=1e-4, verbose=False,
        warm_start=False, momentum=0.9, nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
        beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000)
    clf.fit(X, y)
    clf.partial_fit(X[:40], y[:40])
    proba = clf.predict_proba(X)
    assert proba.shape == (len(X), 3) and np.allclose(proba.sum(axis=1), 1)
    assert [c.shape for c in clf.coefs_] == [(4, 8), (8, 3)] and [b.shape for b in clf.intercepts_] == [(8,), (3,)]
    assert clf.n_layers_ == 3 and clf.n_outputs_ == 3 and clf.out_activation_ == "softmax"
    assert clf.n_iter_ == 1 and clf.t_ == (len(clf.loss_curve_) - 1) * len(X) + 40
    assert clf.loss_ == clf.loss_curve_[-1] and clf.best_loss_ <= min(clf.loss_curve_)
    assert clf.validation_scores_ is None and clf.best_validation_score_ is None
    assert list(clf.classes_) == [0, 1, 2] and clf.n_features_in_ == 4

    clf.set_params(solver="adam", learning_rate_init=1e-2, early_stopping=True, warm_start=False, max_iter=20)
    clf.fit(X, y)
    assert clf.best_loss_ is None and len(clf.validation_scores_) == clf.n_iter_ == len(clf.loss_curve_)
    assert clf.best_validation_score_ == max(clf.validation_scores_)

    reg = MLPRegressor(
        loss="squared_error", hidden_layer_sizes=(8,), activation="relu", solver="adam", alpha=1e-4,
        batch_size="auto", learning_rate="constant", learning_rate_init=1e-2, power_t=0.5, max_iter=40, shuffle=True,
        random_state=0, tol=1e-4, verbose=False, warm_start=True, momentum=0.9, nesterovs_momentum=True,
        early_stopping=False, validation_fraction=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10,
        max_fun=15000)
    target = X[:, 0] - 0.5 * X[:, 1]
    reg.fit(X, target)
    n_first = len(reg.loss_curve_)
    reg.set_params(max_iter=5).fit(X, target)  # warm start: continues
    assert reg.n_iter_ <= 5 and len(reg.loss_curve_) == n_first + reg.n_iter_
    assert reg.out_activation_ == "identity" and reg.n_outputs_ == 1 and reg.predict(X).shape == (len(X),)
    return clf.score(X, y), reg.score(X, target)


def test_the_same_script_runs_with_scikit_learn_and_with_gpunet(iris):
    X, y = iris
    theirs = sklearn_script(sk_nn.MLPClassifier, sk_nn.MLPRegressor, X, y)
    ours = sklearn_script(MLPClassifier, MLPRegressor, X, y)
    assert ours[0] > 0.8 and ours[1] > 0.9 and min(theirs) > 0.5


# -- whole training runs -----------------------------------------------------------------------------------------------
SGD_RUNS = {  # solver="sgd", shuffle=False, float64: scikit-learn's run to rounding
    "nesterov, alpha, partial batch, tol=0": dict(activation="tanh", momentum=0.9, learning_rate_init=0.05, tol=0.0,
                                                  max_iter=15),
    "classical momentum, stops on the loss": dict(activation="relu", momentum=0.5, nesterovs_momentum=False,
                                                  learning_rate_init=0.1, tol=1e-2, n_iter_no_change=3),
    "adaptive": dict(activation="relu", learning_rate="adaptive", momentum=0.0, learning_rate_init=0.5, tol=1e-3,
                     n_iter_no_change=2),
    "invscaling": dict(activation="logistic", learning_rate="invscaling", momentum=0.0, learning_rate_init=0.5,
                       power_t=0.3, max_iter=60),
}


@pytest.mark.parametrize("binary", [False, True], ids=["3 classes", "2 classes"])
@pytest.mark.parametrize("run", list(SGD_RUNS))
def test_sgd_training_is_scikit_learns(iris, run, binary):
    """Same random_state -> the same initial weights (drawn as scikit-learn draws them); then the same batches, the
    alpha penalty, the momentum updates, the schedule and the stopping rule: weights, loss_curve_, n_iter_, t_ and
    the rate agree to rounding, through a warm-start fit and partial_fit calls too."""
    X, y = iris
    if binary:
        y = (y == 1).astype(int)
    params = {"hidden_layer_sizes": (6, 5), "solver": "sgd", "alpha": 1e-2, "batch_size": 40, "shuffle": False,
              "random_state": 1, "max_iter": 300, **SGD_RUNS[run]}
    sk = sk_nn.MLPClassifier(**params)
    ours = MLPClassifier(**params, dtype="float64")

    def assert_same():
        assert max_difference(sk.coefs_ + sk.intercepts_, ours.coefs_ + ours.intercepts_) < 1e-12
        np.testing.assert_allclose(ours.loss_curve_, sk.loss_curve_, rtol=1e-12)
        assert (ours.n_iter_, ours.t_, ours._no_improvement_count) == (sk.n_iter_, sk.t_, sk._no_improvement_count)
        assert ours.model_.optimizer.lr == pytest.approx(sk._optimizer.learning_rate, rel=1e-12)
        assert ours.best_loss_ == pytest.approx(sk.best_loss_, rel=1e-12)

    sk.fit(X, y)
    ours.fit(X, y)
    assert_same()
    sk.set_params(warm_start=True, max_iter=4).fit(X, y)
    ours.set_params(warm_start=True, max_iter=4).fit(X, y)
    assert_same()
    for rows in (slice(None), slice(None, None, 2)):
        sk.partial_fit(X[rows], y[rows])
        ours.partial_fit(X[rows], y[rows])
    assert_same()


def test_the_initial_weights_are_scikit_learns(iris):
    X, y = iris
    for activation in ("relu", "logistic"):
        params = dict(hidden_layer_sizes=(5,), activation=activation, solver="sgd", learning_rate_init=1e-300,
                      momentum=0.0, alpha=0.0, max_iter=1, random_state=3)
        sk = sk_nn.MLPClassifier(**params).fit(X, y)  # a step of 1e-300 leaves every weight as it was drawn
        ours = MLPClassifier(**params, dtype="float64").fit(X, y)
        assert max_difference(sk.coefs_ + sk.intercepts_, ours.coefs_ + ours.intercepts_) == 0.0
        bound = math.sqrt((2.0 if activation == "logistic" else 6.0) / (4 + 5))
        assert 0.5 * bound < np.abs(ours.intercepts_[0]).max() <= bound  # biases drawn too, not zeros


@pytest.mark.parametrize("n_targets", [1, 2])
def test_squared_error_is_twice_scikit_learns(n_targets):
    """torch's MSELoss, mean((y - p)**2), is twice scikit-learn's half squared error; its gradient is 2 / n_outputs_
    times scikit-learn's (p - y) / n. With one target, half the rate and twice alpha (and tol) give scikit-learn's run
    exactly, with twice its loss_curve_; with two, the gradients agree as they are."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(90, 3))
    Y = np.c_[np.sin(X[:, 0]) + X[:, 1], X[:, 2] ** 2][:, :n_targets]
    Y = Y[:, 0] if n_targets == 1 else Y
    params = dict(hidden_layer_sizes=(6,), activation="tanh", batch_size=25, shuffle=False, random_state=0,
                  max_iter=20, solver="sgd", momentum=0.9, tol=0.0)
    sk = sk_nn.MLPRegressor(**params, alpha=1e-2, learning_rate_init=0.02).fit(X, Y)
    factor = 2.0 / n_targets
    ours = MLPRegressor(**params, alpha=1e-2 * factor, learning_rate_init=0.02 / factor, dtype="float64").fit(X, Y)
    assert max_difference(sk.coefs_ + sk.intercepts_, ours.coefs_ + ours.intercepts_) < 1e-12
    if n_targets == 1:
        np.testing.assert_allclose(ours.loss_curve_, 2 * np.array(sk.loss_curve_), rtol=1e-12)


def test_adam_training_is_close_to_scikit_learns(iris):
    """Adam differs only in where epsilon enters (torch's rule): the runs agree closely, not to rounding (tanh: no
    gradient near epsilon's size, where the two rules part)."""
    X, y = iris
    params = dict(hidden_layer_sizes=(6,), activation="tanh", solver="adam", learning_rate_init=1e-2, alpha=1e-3,
                  batch_size=32, shuffle=False, random_state=0, max_iter=15, tol=0.0)
    sk = sk_nn.MLPClassifier(**params).fit(X, y)
    ours = MLPClassifier(**params, dtype="float64").fit(X, y)
    assert 1e-12 < max_difference(sk.coefs_ + sk.intercepts_, ours.coefs_ + ours.intercepts_) < 1e-4
    np.testing.assert_allclose(ours.loss_curve_, sk.loss_curve_, rtol=1e-5)


# -- alpha: the L2 gradient hook ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("rows", [7, 40])
def test_alpha_is_scikit_learns_backprop(iris, n_classes, rows):
    """The batch loss and gradients with the alpha hook equal scikit-learn's ``_backprop`` on the same weights and
    batch, and a hand computation: loss + 0.5 alpha sum(W**2) / n_batch, dW + alpha W / n_batch, db unchanged."""
    X, y = iris
    y = y % n_classes
    alpha = 0.3
    sk = sk_nn.MLPClassifier((5, 4), activation="tanh", alpha=alpha, max_iter=2, random_state=0).fit(X, y)
    ours = MLPClassifier((5, 4), activation="tanh", alpha=alpha, max_iter=1, random_state=7, dtype="float64")
    ours.fit(X, y)
    ours.coefs_, ours.intercepts_ = sk.coefs_, sk.intercepts_  # scikit-learn's weights into gpunet's network
    assert max_difference(ours.coefs_ + ours.intercepts_, sk.coefs_ + sk.intercepts_) == 0.0

    Xb, yb = X[10:10 + rows], y[10:10 + rows]
    Yb = sk._label_binarizer.transform(yb).astype(float)
    n_layers = sk.n_layers_
    loss, coef_grads, intercept_grads = sk._backprop(
        Xb, Yb, None, [Xb] + [None] * (n_layers - 1), [None] * (n_layers - 1),
        [np.empty_like(c) for c in sk.coefs_], [np.empty_like(b) for b in sk.intercepts_])

    trainer = ours.model_.trainer
    trainer.configure(gn.losses.get(ours._loss()), gn.optim.SGD(lr=0.0))
    x, target, _ = trainer.prepare(Xb, Yb[:, 0] if n_classes == 2 else yb)
    value, grads = trainer.backward(trainer.forward(x), target)
    plain = [np.array(g, copy=True) for g in grads]
    penalty = gn_sk._L2Penalty(alpha)(trainer, grads)
    assert float(value + penalty) == pytest.approx(loss, rel=1e-12)
    assert max_difference(grads[0::2], coef_grads) < 1e-14 and max_difference(grads[1::2], intercept_grads) < 1e-14

    weights = [layer.W for layer in ours.model_.layers]
    assert float(penalty) == pytest.approx(0.5 * alpha * sum(float(np.sum(W * W)) for W in weights) / rows,
                                           rel=1e-13)
    for dW, dW0, W in zip(grads[0::2], plain[0::2], weights):
        np.testing.assert_allclose(dW - dW0, alpha * W / rows, rtol=1e-12, atol=1e-16)
    for db, db0 in zip(grads[1::2], plain[1::2]):
        np.testing.assert_array_equal(db, db0)

    trainer.gradient_hooks.append(gn_sk._L2Penalty(alpha))  # wired into the step: the step's loss includes it
    try:
        _, step_loss = trainer.step(x, target)
    finally:
        trainer.gradient_hooks.clear()
    assert float(step_loss) == pytest.approx(loss, rel=1e-12)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "reference"])
def test_alpha_hook_on_every_namespace(device, fused):
    """The hook's in-place path (NumPy, CuPy: through scratch arrays) and its Array-API path agree with the hand
    computation on the host."""
    rng = np.random.default_rng(0)
    model = gn.Sequential([gn.Dense(3, 5, "tanh"), gn.Dense(5, 2, "softmax")], device=device, dtype="float64",
                          seed=0, fused=fused)
    trainer = model.trainer
    trainer.configure(gn.losses.get("cce"), gn.optim.SGD(lr=0.0))
    x, target, _ = trainer.prepare(rng.normal(size=(6, 3)), rng.integers(0, 2, 6))
    _, grads = trainer.backward(trainer.forward(x), target)
    plain = [gn.to_numpy(g).copy() for g in grads]
    weights = model.get_weights()[0::2]
    for _ in range(2):  # twice: the scratch arrays are reused
        penalty = gn_sk._L2Penalty(0.5)(trainer, grads)
    assert float(penalty) == pytest.approx(0.25 * sum(float(np.sum(W * W)) for W in weights) / 6, rel=1e-13)
    for dW, dW0, W in zip(grads[0::2], plain[0::2], weights):
        np.testing.assert_allclose(gn.to_numpy(dW) - dW0, 2 * 0.5 * W / 6, rtol=1e-12, atol=1e-16)
    for db, db0 in zip(grads[1::2], plain[1::2]):
        np.testing.assert_array_equal(gn.to_numpy(db), db0)


def test_alpha_hook_only_lives_during_fit(iris):
    X, y = iris
    clf = MLPClassifier((4,), alpha=1.0, max_iter=2, random_state=0)
    original = gn.Sequential.fit
    seen = []

    def spy(model, *args, **kwargs):
        seen.append(list(model.trainer.gradient_hooks))
        return original(model, *args, **kwargs)

    gn.Sequential.fit = spy
    try:
        clf.fit(X, y)
        clf.set_params(alpha=0.0).partial_fit(X, y)
    finally:
        gn.Sequential.fit = original
    assert [type(h) for h in seen[0]] == [gn_sk._L2Penalty] and seen[1] == []
    assert clf.model_.trainer.gradient_hooks == []


# -- the optimizers ----------------------------------------------------------------------------------------------------
def tiny_model():
    return gn.Sequential([gn.Dense(3, 4, "tanh"), gn.Dense(4, 2)], dtype="float64", seed=0)


def gradient_sequence(model, steps, seed=0):
    rng = np.random.default_rng(seed)
    return [[rng.normal(size=p.shape) for p in model.parameters()] for _ in range(steps)]


@pytest.mark.parametrize("momentum, nesterov", [(0.9, True), (0.9, False), (0.0, True), (0.5, True)])
def test_sgd_is_scikit_learns_sgd_optimizer_and_torchs(momentum, nesterov):
    """The wrapper's SGD (torch.optim.SGD(momentum, nesterov=nesterovs_momentum and momentum > 0)) and
    scikit-learn's SGDOptimizer: v = momentum v - lr g, p += v (Nesterov: p += momentum v - lr g) equal torch's
    buf = momentum buf + g, p -= lr buf (Nesterov: p -= lr (g + momentum buf)) with v = -lr buf."""
    torch = pytest.importorskip("torch")
    lr = 0.07
    settings = MLPClassifier(solver="sgd", learning_rate_init=lr, momentum=momentum,
                             nesterovs_momentum=nesterov)._settings()
    model = tiny_model()
    start = model.get_weights()
    sk_params = [w.copy() for w in start]
    sk_opt = SGDOptimizer(sk_params, learning_rate_init=lr, lr_schedule="constant", momentum=momentum,
                          nesterov=nesterov)
    t_params = [torch.tensor(w, requires_grad=True) for w in start]
    t_opt = torch.optim.SGD(t_params, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0)
    for grads in gradient_sequence(model, 6):
        settings["optimizer"].apply(model, [np.array(g) for g in grads])
        sk_opt.update_params(sk_params, grads)
        for p, g in zip(t_params, grads):
            p.grad = torch.tensor(g)
        t_opt.step()
    assert max_difference(model.get_weights(), sk_params) < 1e-14
    assert max_difference(model.get_weights(), [p.detach().numpy() for p in t_params]) < 1e-14


def test_adam_is_torchs_and_scikit_learns_moves_epsilon():
    """The wrapper's Adam is torch.optim.Adam(lr, (beta_1, beta_2), epsilon). scikit-learn's AdamOptimizer is torch's
    rule with epsilon / sqrt(1 - beta_2**t) in place of epsilon (checked by hand, step by step, with a large
    epsilon, where the difference shows)."""
    torch = pytest.importorskip("torch")
    lr, b1, b2, eps = 0.01, 0.8, 0.95, 1e-2
    settings = MLPClassifier(solver="adam", learning_rate_init=lr, beta_1=b1, beta_2=b2, epsilon=eps)._settings()
    model = tiny_model()
    start = model.get_weights()
    t_params = [torch.tensor(w, requires_grad=True) for w in start]
    t_opt = torch.optim.Adam(t_params, lr=lr, betas=(b1, b2), eps=eps)
    sk_params = [w.copy() for w in start]
    sk_opt = AdamOptimizer(sk_params, learning_rate_init=lr, beta_1=b1, beta_2=b2, epsilon=eps)
    hand = [w.copy() for w in start]
    m, v = [np.zeros_like(w) for w in start], [np.zeros_like(w) for w in start]
    for t, grads in enumerate(gradient_sequence(model, 5, seed=1), start=1):
        settings["optimizer"].apply(model, [np.array(g) for g in grads])
        for p, g in zip(t_params, grads):
            p.grad = torch.tensor(g)
        t_opt.step()
        sk_opt.update_params(sk_params, grads)
        for p, mi, vi, g in zip(hand, m, v, grads):  # torch's formula, epsilon moved
            mi[...] = b1 * mi + (1 - b1) * g
            vi[...] = b2 * vi + (1 - b2) * g * g
            p -= lr / (1 - b1**t) * mi / (np.sqrt(vi) / math.sqrt(1 - b2**t) + eps / math.sqrt(1 - b2**t))
        assert max_difference(sk_params, hand) < 1e-14
    assert max_difference(model.get_weights(), [p.detach().numpy() for p in t_params]) < 1e-14
    assert max_difference(model.get_weights(), sk_params) > 1e-6  # the moved epsilon matters here


# -- the stopping rule and the schedule --------------------------------------------------------------------------------
def scripted_sequences():
    """Losses / scores on a grid of 0.25 (exact in binary, so ties at exactly tol are real ties), plus NaN."""
    rng = np.random.default_rng(0)
    walks = [np.cumsum(rng.choice([-0.5, -0.25, 0.0, 0.0, 0.25], size=40)) + 10 for _ in range(6)]
    handmade = [[4.0, 3.75, 3.5, 3.5, 3.25, 3.4, 3.0, 3.0, 3.0, 3.0, 3.0, 2.75, 2.75, 2.75, 2.75, 2.75, 2.75],
                [1.0, float("nan"), 0.75, 0.75, 0.5, float("nan"), 0.5, 0.5, 0.5, 0.5, 0.25] + [0.25] * 12]
    return [list(w) for w in walks] + handmade


def sklearn_loop(values, *, early_stopping, schedule, tol, n_iter_no_change, lr):
    """The epoch-end part of scikit-learn's _fit_stochastic, run with its own _update_no_improvement_count and
    SGDOptimizer on scripted training losses (or validation scores, through a scripted _score)."""
    est = sk_nn.MLPClassifier(tol=tol, n_iter_no_change=n_iter_no_change, early_stopping=early_stopping)
    est.loss_curve_, est._no_improvement_count = [], 0
    est.coefs_, est.intercepts_ = [np.zeros((1, 1))], [np.zeros(1)]
    if early_stopping:
        est.validation_scores_, est.best_validation_score_, est.best_loss_ = [], -np.inf, None
        scores = iter(values)
        est._score = lambda X, y, sample_weight=None: next(scores)
    else:
        est.best_loss_, est.validation_scores_, est.best_validation_score_ = np.inf, None, None
    optimizer = SGDOptimizer([np.zeros(1)], learning_rate_init=lr, lr_schedule=schedule, momentum=0.0)
    trace = []
    for epoch, value in enumerate(values):
        est.loss_curve_.append(1.0 if early_stopping else value)
        est._update_no_improvement_count(early_stopping, None, None, None)
        optimizer.iteration_ends(epoch)
        stop = False
        if est._no_improvement_count > n_iter_no_change:
            stop = optimizer.trigger_stopping("msg", False)
            if not stop:
                est._no_improvement_count = 0
        trace.append((est._no_improvement_count, optimizer.learning_rate, est.best_loss_, est.best_validation_score_))
        if stop:
            break
    return trace


def gpunet_loop(values, *, early_stopping, schedule, tol, n_iter_no_change, lr):
    """The same values through the wrapper's callbacks (_LearningRate, _NoImprovement) on a real model."""
    est = MLPClassifier(solver="sgd", learning_rate=schedule, learning_rate_init=lr, tol=tol,
                        n_iter_no_change=n_iter_no_change, early_stopping=early_stopping, momentum=0.0)
    settings = est._settings()
    est.model_ = tiny_model()
    est.model_.trainer.optimizer = settings["optimizer"]
    est._start_state(settings)
    est.n_iter_ = 0
    rate = gn_sk._LearningRate(schedule, lr, 0.5)
    stopper = gn_sk._NoImprovement(est, rate, n_train=1, held_out=None, settings=settings)
    scores = iter(values)
    stopper._validation_score = lambda: (next(scores), 0.0)
    for cb in (rate, stopper):
        cb.model = est.model_
    trace = []
    for epoch, value in enumerate(values):
        rate.on_epoch_begin(epoch)
        logs = {"loss": 1.0 if early_stopping else value}
        rate.on_epoch_end(epoch, logs)
        stopper.on_epoch_end(epoch, logs)
        trace.append((est._no_improvement_count, est.model_.optimizer.lr, est.best_loss_, est.best_validation_score_))
        assert est.model_.stop_training == stopper.stopped
        if stopper.stopped:
            break
    return trace


def same(a, b) -> bool:
    """Equal traces, NaN equal to NaN."""
    nan = lambda x: "nan" if isinstance(x, float) and math.isnan(x) else x  # noqa: E731
    return [tuple(map(nan, row)) for row in a] == [tuple(map(nan, row)) for row in b]


@pytest.mark.parametrize("early_stopping", [False, True], ids=["training loss", "validation score"])
@pytest.mark.parametrize("schedule", ["constant", "adaptive"])
def test_stopping_rule_is_scikit_learns_on_scripted_sequences(early_stopping, schedule):
    """Counts, best values, the adaptive rate (divided by 5, stop at <= 1e-6) and the stopping epoch, epoch by
    epoch, for every scripted sequence and several (tol, n_iter_no_change), as scikit-learn's own code computes."""
    for values, tol, n_iter_no_change in itertools.product(scripted_sequences(), [0.0, 0.25, 0.3], [1, 2, 3]):
        if early_stopping:
            values = [-v for v in values]  # scores go up
        kwargs = dict(early_stopping=early_stopping, schedule=schedule, tol=tol, n_iter_no_change=n_iter_no_change,
                      lr=1e-4)
        theirs, ours = sklearn_loop(values, **kwargs), gpunet_loop(values, **kwargs)
        assert same(ours, theirs), (values, tol, n_iter_no_change, ours, theirs)


def test_invscaling_rate_is_set_at_each_epochs_end():
    est = MLPClassifier(solver="sgd", learning_rate="invscaling", learning_rate_init=0.3, power_t=0.7)
    settings = est._settings()
    model = tiny_model()
    model.trainer.optimizer = settings["optimizer"]
    rate = gn_sk._LearningRate("invscaling", 0.3, 0.7)
    rate.model = model
    sk_opt = SGDOptimizer([np.zeros(1)], learning_rate_init=0.3, lr_schedule="invscaling", power_t=0.7)
    for t in (0, 50, 100, 1234):
        rate.iteration_ends(t)
        sk_opt.iteration_ends(t)
        assert model.trainer.optimizer.lr == sk_opt.learning_rate


def test_convergence_warning_is_scikit_learns(iris):
    X, y = iris
    for cls in (sk_nn.MLPClassifier, MLPClassifier):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cls(hidden_layer_sizes=(3,), max_iter=2, random_state=0).fit(X, y)
        messages = [str(w.message) for w in caught if issubclass(w.category, ConvergenceWarning)]
        assert messages == ["Stochastic Optimizer: Maximum iterations (2) reached and the optimization hasn't "
                            "converged yet."]
