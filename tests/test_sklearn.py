"""gpunet.sklearn: scikit-learn's estimator checks, and the estimators in pipelines, searches and on real data.

The comparisons with scikit-learn's own MLP code and with torch are in ``tests/test_sklearn_reference.py``.

Estimator checks expected to fail, with why (``expected_failed_checks``; both estimators unless said):

- ``check_sample_weight_equivalence_on_dense_data``: a weight of k equals k repeated rows only up to the ``alpha``
  term, which gpunet divides by the batch's rows (the weights rescaled to mean 1) where scikit-learn divides by the
  batch's weight sum (about 1e-4 relative in the check's predictions), and up to float32 rounding (the check wants
  1e-7); with mini-batches the repeated rows also change the batches.
- ``check_methods_subset_invariance`` (``dtype="float32"`` only): float32 matrix products of a 1-row batch and of a
  many-row batch round differently (BLAS picks other kernels), about 1e-7 apart; the check wants 1e-7 absolute.
  With ``dtype="float64"`` the check passes (``test_float64_predictions_do_not_depend_on_the_batch``).
"""

import copy
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn", minversion="1.6")  # an optional extra: gpunet[data]

from sklearn.base import clone  # noqa: E402
from sklearn.compose import TransformedTargetRegressor  # noqa: E402
from sklearn.datasets import load_digits, load_iris, make_classification, make_regression  # noqa: E402
from sklearn.exceptions import ConvergenceWarning, NotFittedError  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score, train_test_split  # noqa: E402
from sklearn.pipeline import Pipeline, make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils import get_tags  # noqa: E402
from sklearn.utils.estimator_checks import check_estimator, parametrize_with_checks  # noqa: E402

import gpunet as gn  # noqa: E402
from gpunet.sklearn import MLPClassifier, MLPRegressor  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

_WEIGHTS_REASON = ("a weight of k equals k repeated rows only up to alpha's divisor (batch rows, weights rescaled "
                   "to mean 1, against scikit-learn's weight sum) and float32 rounding; mini-batches differ too")
_SUBSET_REASON = ("float32 products of a 1-row and a many-row batch round differently (other BLAS kernels), ~1e-7 "
                  "apart; the check wants 1e-7 absolute")


def expected_failed_checks(estimator) -> dict:
    failing = {"check_sample_weight_equivalence_on_dense_data": _WEIGHTS_REASON}
    if estimator.dtype == "float32":
        failing["check_methods_subset_invariance"] = _SUBSET_REASON
    return failing

_cuda_ok, _cuda_why = gn.cuda_available()


@parametrize_with_checks([MLPClassifier(max_iter=20, random_state=0), MLPRegressor(max_iter=20, random_state=0)],
                         expected_failed_checks=expected_failed_checks)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


# -- data ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def iris():
    X, y = load_iris(return_X_y=True)
    return train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)


@pytest.fixture(scope="module")
def blobs():
    """A small, easy 3-class problem, already scaled."""
    X, y = make_classification(n_samples=240, n_features=6, n_informative=4, n_classes=3, n_clusters_per_class=1,
                               class_sep=2.0, random_state=0)
    return StandardScaler().fit_transform(X), y


def small_clf(**kw):
    return MLPClassifier(**{"hidden_layer_sizes": (16,), "learning_rate_init": 1e-2, "batch_size": 32, "max_iter": 40,
                            "random_state": 0, **kw})


def small_reg(**kw):
    return MLPRegressor(**{"hidden_layer_sizes": (16,), "learning_rate_init": 1e-2, "batch_size": 32, "max_iter": 40,
                           "random_state": 0, **kw})


# -- packaging -----------------------------------------------------------------------------------------------------
def test_import_gpunet_does_not_import_sklearn():
    code = "import sys, gpunet; assert 'sklearn' not in sys.modules, 'import gpunet imported sklearn'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_clear_import_error_without_sklearn():
    code = ("import sys; sys.modules['sklearn'] = None\n"
            "try:\n    import gpunet.sklearn\nexcept ImportError as e:\n    print(e)\nelse:\n    raise SystemExit(1)")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert "gpunet.sklearn needs scikit-learn" in out and "pip install" in out


# -- accuracy on real data -----------------------------------------------------------------------------------------
def test_iris_accuracy(iris):
    X_train, X_test, y_train, y_test = iris
    pipe = Pipeline([("scale", StandardScaler()),
                     ("mlp", MLPClassifier((32,), learning_rate_init=1e-2, max_iter=100, random_state=0))])
    assert pipe.fit(X_train, y_train).score(X_test, y_test) >= 0.95
    assert isinstance(pipe.named_steps["mlp"].model_, gn.Sequential)


def test_digits_accuracy():
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)
    pipe = make_pipeline(StandardScaler(), MLPClassifier((64,), max_iter=30, random_state=0))
    assert pipe.fit(X_train, y_train).score(X_test, y_test) >= 0.95
    assert pipe[-1].n_outputs_ == 10 and pipe[-1].n_features_in_ == 64


def test_regression_r2():
    X, y = make_regression(n_samples=400, n_features=8, noise=5.0, random_state=0)
    X_train, X_test, y_train, y_test = train_test_split(X, y, random_state=0)
    reg = TransformedTargetRegressor(make_pipeline(StandardScaler(), small_reg(hidden_layer_sizes=(32,),
                                                                               max_iter=100)),
                                     transformer=StandardScaler())
    assert reg.fit(X_train, y_train).score(X_test, y_test) >= 0.9
    pred = reg.predict(X_test)
    assert isinstance(pred, np.ndarray) and pred.shape == y_test.shape


# -- classifier behaviour ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_classes", [2, 3])
def test_string_labels_round_trip_and_probabilities(blobs, n_classes):
    X, y = blobs
    names = np.array(["setosa", "versicolor", "virginica"])
    keep = y < n_classes
    X, labels = X[keep], names[y[keep]]
    clf = small_clf().fit(X, labels)
    assert clf.classes_.tolist() == names[:n_classes].tolist()
    assert clf.n_outputs_ == (1 if n_classes == 2 else n_classes)
    assert clf.model_.layers[-1].activation.name == ("sigmoid" if n_classes == 2 else "softmax")
    pred = clf.predict(X)
    assert pred.dtype == labels.dtype and set(pred) <= set(labels)
    assert clf.score(X, labels) > 0.9
    proba = clf.predict_proba(X)
    assert isinstance(proba, np.ndarray) and proba.shape == (len(X), n_classes)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-12)
    assert np.all((proba >= 0) & (proba <= 1))
    np.testing.assert_array_equal(clf.classes_[proba.argmax(axis=1)], pred)
    with np.errstate(divide="ignore"):  # a float32 sigmoid can saturate to exactly 0 or 1
        np.testing.assert_allclose(clf.predict_log_proba(X), np.log(proba))


def test_one_class_is_refused(blobs):
    X, y = blobs
    with pytest.raises(ValueError, match="at least 2 classes"):
        small_clf().fit(X, np.zeros(len(X), dtype=int))
    with pytest.raises(ValueError, match="class"):  # sample weights leaving one class
        small_clf().fit(X, y % 2, sample_weight=(y % 2).astype(float))


def test_continuous_and_multilabel_targets_are_refused(blobs):
    X, _ = blobs
    with pytest.raises(ValueError, match="Unknown label type"):
        small_clf().fit(X, np.linspace(0, 1, len(X)))
    with pytest.raises(ValueError):
        small_clf().fit(X, np.eye(3, dtype=int)[np.arange(len(X)) % 3])


def test_class_weight(blobs):
    X, y = blobs
    y = (y == 0).astype(int)  # imbalanced: about a third are 1
    plain = small_clf().fit(X, y)
    heavy = small_clf(class_weight={1: 20.0}).fit(X, y)
    assert heavy.predict(X).mean() > plain.predict(X).mean()
    balanced = small_clf(class_weight="balanced").fit(X, y)
    assert balanced.score(X, y) > 0.8
    with pytest.raises(ValueError, match="not among the classes"):
        small_clf(class_weight={7: 1.0}).fit(X, y)
    with pytest.raises(ValueError, match="partial_fit"):
        small_clf(class_weight="balanced").partial_fit(X, y, classes=[0, 1])


def test_sample_weight_scale_does_not_matter(blobs):
    X, y = blobs
    w = np.random.default_rng(0).uniform(0.5, 2.0, len(X))
    a = small_clf(max_iter=5).fit(X, y, sample_weight=w).predict_proba(X)
    b = small_clf(max_iter=5).fit(X, y, sample_weight=10 * w).predict_proba(X)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    c = small_clf(max_iter=5).fit(X, y, sample_weight=np.ones(len(X))).predict_proba(X)
    d = small_clf(max_iter=5).fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(c, d)


# -- regressor behaviour -------------------------------------------------------------------------------------------
def test_regressor_output_shapes():
    X, Y = make_regression(n_samples=120, n_features=4, n_targets=2, noise=0.1, random_state=0)
    Y = Y / Y.std(axis=0)
    reg = small_reg().fit(X, Y)
    assert reg.n_outputs_ == 2 and reg.predict(X).shape == (120, 2)
    assert reg.score(X, Y) > 0.8
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn's MLP does not converge in 2 iterations
        from sklearn.neural_network import MLPRegressor as SkRegressor

        reference = SkRegressor(max_iter=2).fit(X, Y[:, :1]).predict(X).shape
    assert small_reg(max_iter=2).fit(X, Y[:, :1]).predict(X).shape == reference == (120,)  # (n, 1): raveled
    assert small_reg(max_iter=2).fit(X, Y[:, 0]).predict(X).shape == (120,)
    assert get_tags(reg).target_tags.multi_output


@pytest.mark.parametrize("loss", ["mse", "squared_error", "mae", "absolute_error", "huber"])
def test_regressor_losses(loss):
    X, y = make_regression(n_samples=150, n_features=3, noise=0.1, random_state=1)
    reg = small_reg(loss=loss, huber_delta=0.5, max_iter=80).fit(X, y / y.std())
    assert reg.score(X, y / y.std()) > 0.8
    expected = {"squared_error": "mse", "absolute_error": "mae"}.get(loss, loss)
    assert reg.model_.loss.name == expected
    if loss == "huber":
        assert reg.model_.loss.delta == 0.5


# -- training control ----------------------------------------------------------------------------------------------
def test_partial_fit_improves_the_loss(blobs):
    X, y = blobs
    clf = MLPClassifier((16,), learning_rate_init=1e-3, batch_size=32, random_state=0)
    with pytest.raises(ValueError, match="classes must be passed"):
        clf.partial_fit(X, y)
    for _ in range(8):
        clf.partial_fit(X, y, classes=np.unique(y))
    assert clf.n_iter_ == 1 and len(clf.loss_curve_) == 8 and clf.t_ == 8 * len(X)  # n_iter_: the last call's
    assert clf.loss_curve_[-1] < 0.8 * clf.loss_curve_[0] and clf.loss_ == clf.loss_curve_[-1]
    assert clf.best_loss_ == min(clf.loss_curve_)
    with pytest.raises(ValueError, match="not in classes_"):
        clf.partial_fit(X[:3], np.array([0, 1, 9]))
    with pytest.raises(ValueError, match="differs"):
        clf.partial_fit(X, y, classes=[0, 1, 2, 3])
    with pytest.raises(ValueError, match="features"):
        clf.partial_fit(X[:, :3], y)
    clf.partial_fit(X[y == 0], y[y == 0])  # a call may hold only some of the classes

    reg = MLPRegressor(hidden_layer_sizes=(16,), learning_rate_init=1e-2, batch_size=32, random_state=0)
    target = X[:, 0] - X[:, 1]
    for _ in range(6):
        reg.partial_fit(X, target)
    assert reg.loss_curve_[-1] < 0.5 * reg.loss_curve_[0]
    with pytest.raises(ValueError, match="target"):
        reg.partial_fit(X, np.c_[target, target])
    with pytest.raises(ValueError, match="partial_fit does not support early_stopping"):
        clone(reg).set_params(early_stopping=True).partial_fit(X, target)


def test_partial_fit_continues_fit(blobs):
    X, y = blobs
    clf = small_clf(max_iter=3).fit(X, y)
    optimizer = clf.model_.optimizer
    clf.partial_fit(X, y)  # no classes needed after fit
    assert clf.n_iter_ == 1 and clf.model_.optimizer is optimizer and optimizer.steps == 4 * 8
    assert len(clf.loss_curve_) == 4 and clf.t_ == 4 * len(X)


def test_warm_start_continues_the_network(blobs):
    X, y = blobs
    clf = small_clf(max_iter=3, warm_start=True).fit(X, y)
    before = [w.copy() for w in clf.coefs_]
    first_optimizer = clf.model_.optimizer
    clf.set_params(max_iter=2).fit(X, y)
    assert clf.n_iter_ == 2 and len(clf.loss_curve_) == 5 and clf.t_ == 5 * len(X)
    assert clf.model_.optimizer is not first_optimizer and clf.model_.optimizer.steps == 2 * 8  # a fresh one
    assert not np.array_equal(before[0], clf.coefs_[0])
    with pytest.raises(ValueError, match="same classes"):
        clf.fit(X[y < 2], y[y < 2])
    with pytest.raises(ValueError, match="features"):
        clf.fit(X[:, :4], y)
    with pytest.raises(ValueError, match="hidden_layer_sizes"):
        clone(clf).fit(X, y).set_params(hidden_layer_sizes=(8,)).fit(X, y)
    cold = small_clf(max_iter=3).fit(X, y)
    np.testing.assert_array_equal(clf.set_params(warm_start=False, max_iter=3).fit(X, y).coefs_[0], cold.coefs_[0])
    assert len(clf.loss_curve_) == 3


def test_early_stopping(blobs):
    X, y = blobs
    clf = MLPClassifier((16,), learning_rate_init=0.05, batch_size=32, max_iter=500, early_stopping=True,
                        validation_fraction=0.25, n_iter_no_change=5, random_state=0).fit(X, y)
    assert clf.n_iter_ < 500
    assert len(clf.loss_curve_) == len(clf.validation_loss_curve_) == len(clf.validation_scores_) == clf.n_iter_
    assert clf.best_loss_ is None  # scikit-learn's: the validation score decides
    assert clf.best_validation_score_ == max(clf.validation_scores_)
    assert 0.0 <= clf.best_validation_score_ <= 1.0
    # stopped on the first epoch whose count of epochs not beating the best by tol exceeds n_iter_no_change
    scores, best, count = clf.validation_scores_, -np.inf, 0
    for epoch, score in enumerate(scores):
        count = count + 1 if score < best + clf.tol else 0
        best = max(best, score)
        assert (count > 5) == (epoch == len(scores) - 1)

    reg = small_reg(early_stopping=True, max_iter=500, n_iter_no_change=3).fit(X, X[:, 0])
    assert reg.n_iter_ < 500 and reg.best_validation_score_ > 0.8
    fitted = small_clf().fit(X, y)
    assert fitted.validation_scores_ is None and fitted.best_validation_score_ is None


def test_early_stopping_restores_the_best_weights(blobs):
    from gpunet.training import split_validation  # the split fit makes: stratified, seeded by random_state

    X, y = blobs
    w = np.random.default_rng(1).uniform(0.2, 2.0, len(X))
    clf = small_clf(early_stopping=True, validation_fraction=0.25, max_iter=300, n_iter_no_change=4,
                    tol=0.0).fit(X, y, sample_weight=w)
    _, val_rows = split_validation(len(X), 0.25, y, np.random.default_rng(0))
    assert clf.score(X[val_rows], y[val_rows], sample_weight=w[val_rows]) == pytest.approx(clf.best_validation_score_)
    assert clf.best_validation_score_ == max(clf.validation_scores_)
    val_loss = clf.model_.evaluate(X[val_rows], y[val_rows])["loss"]
    assert val_loss == pytest.approx(clf.validation_loss_curve_[int(np.argmax(clf.validation_scores_))], rel=1e-5)


def test_validation_set_too_small_is_refused(blobs):
    X, y = blobs
    with pytest.raises(ValueError, match="validation set is too small"):
        small_reg(early_stopping=True, validation_fraction=0.01).fit(X[:60], X[:60, 0])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # NumPy warns on the overflow we provoke
def test_a_diverging_fit_leaves_no_model():
    X = np.random.default_rng(0).normal(size=(50, 3))
    reg = MLPRegressor(hidden_layer_sizes=(8,), solver="sgd", learning_rate_init=10.0, max_iter=50, random_state=0)
    with pytest.raises(gn.NonFiniteLossError):
        reg.fit(X, X @ [1e3, 2e3, 3e3])
    with pytest.raises(NotFittedError):
        reg.predict(X)
    assert not [k for k in vars(reg) if k.endswith("_")]


def test_stops_when_training_loss_stalls(blobs):
    X, y = blobs
    clf = small_clf(max_iter=1000, tol=1e-2, n_iter_no_change=3).fit(X, y)
    assert clf.n_iter_ < 1000 and clf.best_loss_ == min(clf.loss_curve_)
    assert small_clf(max_iter=30, tol=10.0, n_iter_no_change=np.inf).fit(X, y).n_iter_ == 30  # inf: never stops


def test_convergence_warning(blobs):
    X, y = blobs
    with pytest.warns(ConvergenceWarning, match=r"Maximum iterations \(2\) reached"):
        small_clf(max_iter=2).fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        small_clf(max_iter=2).partial_fit(X, y, classes=[0, 1, 2])  # one epoch asked, one run
        small_clf(max_iter=500, tol=1.0, n_iter_no_change=1).fit(X, y)  # stopped


def test_batch_size(blobs):
    X, y = blobs  # 240 rows
    assert small_clf(batch_size="auto", max_iter=1).fit(X, y).model_.optimizer.steps == 2  # min(200, 240) rows
    assert small_clf(batch_size="auto", max_iter=1).fit(X[:150], y[:150]).model_.optimizer.steps == 1
    assert small_clf(batch_size=None, max_iter=1).fit(X, y).model_.optimizer.steps == 1
    with pytest.warns(UserWarning, match="It is going to be clipped"):
        assert small_clf(batch_size=1000, max_iter=1).fit(X, y).model_.optimizer.steps == 1


def test_verbose_prints_scikit_learns_lines(blobs, capsys):
    X, y = blobs
    small_clf(max_iter=50, tol=1.0, n_iter_no_change=1, verbose=True).fit(X, y)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("Iteration 1, loss = ") and out[-1] == (
        "Training loss did not improve more than tol=1.000000 for 1 consecutive epochs. Stopping.")
    small_clf(max_iter=2, early_stopping=True, verbose=1).fit(X, y)
    assert capsys.readouterr().out.splitlines()[1].startswith("Validation score: ")
    small_clf(max_iter=2).fit(X, y)
    assert capsys.readouterr().out == ""


def test_solvers_and_hyperparameters(blobs):
    X, y = blobs
    for name in ("sgd", "adam", "adamw", "rmsprop", "adagrad"):
        clf = small_clf(solver=name, learning_rate_init=1e-2, weight_decay=1e-4, momentum=0.8, max_iter=3).fit(X, y)
        opt = clf.model_.optimizer
        assert opt.name == name and opt.lr == 1e-2 and opt.weight_decay == 1e-4
        assert name != "sgd" or (opt.momentum == 0.8 and opt.nesterov)
    opt = small_clf(solver="adam", beta_1=0.8, beta_2=0.99, epsilon=1e-6, max_iter=1).fit(X, y).model_.optimizer
    assert opt.betas == (0.8, 0.99) and opt.eps == 1e-6
    opt = small_clf(solver="sgd", nesterovs_momentum=False, max_iter=1).fit(X, y).model_.optimizer
    assert opt.momentum == 0.9 and not opt.nesterov
    assert not small_clf(solver="sgd", momentum=0.0, max_iter=1).fit(X, y).model_.optimizer.nesterov
    clf = small_clf(hidden_layer_sizes=(8, 4), activation="tanh", batch_size=None, dtype="float64", max_iter=2)
    model = clf.fit(X, y).model_
    assert [(d.in_features, d.out_features, d.activation.name) for d in model.layers] == [
        (6, 8, "tanh"), (8, 4, "tanh"), (4, 3, "softmax")]
    assert model.dtype == "float64" and clf.model_.optimizer.steps == 2  # full batch: one step per epoch
    assert small_clf(hidden_layer_sizes=(), max_iter=2).fit(X, y).model_.count_params() == 7 * 3
    assert small_clf(activation="logistic", max_iter=2).fit(X, y).model_.layers[0].activation.name == "sigmoid"
    assert small_clf(max_fun=1, max_iter=2).fit(X, y).n_iter_ == 2  # L-BFGS's: no effect
    assert small_clf(max_iter=2).fit(X, y).model_.trainer.gradient_hooks == []  # alpha's hook: only during fit


def test_learning_rate_is_the_schedule_not_the_rate(blobs):
    X, y = blobs
    with pytest.raises(TypeError, match=r"learning_rate_init=0\.01"):
        MLPClassifier(learning_rate=0.01).fit(X, y)
    with pytest.raises(ValueError, match="'constant', 'invscaling', 'adaptive'"):
        MLPClassifier(learning_rate="cosine").fit(X, y)
    lrs = small_clf(solver="sgd", learning_rate="invscaling", power_t=0.5, learning_rate_init=0.1, max_iter=3,
                    tol=0.0, batch_size=None).fit(X, y)
    assert lrs.model_.optimizer.lr == pytest.approx(0.1 / (3 * len(X) + 1) ** 0.5)
    adam = small_clf(learning_rate="invscaling", max_iter=3).fit(X, y)  # only solver="sgd" has a schedule
    assert adam.model_.optimizer.lr == 1e-2


@pytest.mark.parametrize("params, error", [
    ({"solver": "lbfgs"}, ValueError), ({"solver": "newton"}, ValueError),
    ({"hidden_layer_sizes": (10, 0)}, ValueError),
    ({"hidden_layer_sizes": "wide"}, TypeError), ({"activation": "softmax"}, ValueError),
    ({"learning_rate_init": -1.0}, ValueError), ({"learning_rate_init": 0.0}, ValueError),
    ({"learning_rate": 0.1}, TypeError), ({"alpha": -1.0}, ValueError), ({"power_t": -0.5}, ValueError),
    ({"batch_size": 0}, ValueError), ({"batch_size": "big"}, TypeError), ({"max_iter": 0}, ValueError),
    ({"shuffle": "yes"}, TypeError), ({"warm_start": 1}, TypeError), ({"nesterovs_momentum": None}, TypeError),
    ({"early_stopping": 1}, TypeError), ({"momentum": 1.5}, ValueError), ({"beta_1": 1.0}, ValueError),
    ({"beta_2": -0.1}, ValueError), ({"epsilon": 0.0}, ValueError), ({"max_fun": 0}, ValueError),
    ({"validation_fraction": 1.0}, ValueError), ({"dtype": "float16"}, ValueError), ({"verbose": -1}, ValueError),
    ({"device": "tpu"}, ValueError), ({"random_state": -1}, ValueError), ({"class_weight": "auto"}, ValueError),
    ({"tol": -1.0}, ValueError), ({"n_iter_no_change": 0}, ValueError), ({"weight_decay": -1.0}, ValueError),
])
def test_parameters_are_checked_in_fit_not_init(blobs, params, error):
    X, y = blobs
    clf = MLPClassifier(**params)  # never raises: scikit-learn checks parameters in fit
    assert clf.get_params()[next(iter(params))] == next(iter(params.values()))
    with pytest.raises(error, match=next(iter(params))):  # the message names the parameter
        clf.fit(X, y)
    if "batch_size" in params:
        with pytest.raises(error, match=r"^batch_size must be 'auto', a positive integer or None; received "):
            clf.fit(X, y)


def test_lbfgs_and_poisson_are_refused_clearly():
    X, y = [[0.0], [1.0], [2.0]], [0.0, 1.0, 2.0]
    with pytest.raises(ValueError, match="gradient descent"):
        MLPRegressor(solver="lbfgs").fit(X, y)
    with pytest.raises(ValueError, match="'poisson' is not supported"):
        MLPRegressor(loss="poisson").fit(X, y)
    with pytest.raises(ValueError, match="loss must be"):
        MLPRegressor(loss="hinge").fit(X, y)
    with pytest.raises(ValueError, match="first positional parameter"):  # scikit-learn >= 1.7's order
        MLPRegressor((8,)).fit(X, y)


# -- fitted attributes --------------------------------------------------------------------------------------------
def test_fitted_attributes_follow_the_network(blobs):
    X, y = blobs
    clf = small_clf(hidden_layer_sizes=(5, 4), max_iter=2).fit(X, y)
    model = clf.model_
    assert clf.n_layers_ == 4 and clf.out_activation_ == "softmax" and clf.n_outputs_ == 3
    assert [c.shape for c in clf.coefs_] == [(6, 5), (5, 4), (4, 3)]
    assert [b.shape for b in clf.intercepts_] == [(5,), (4,), (3,)]
    for got, want in zip(clf.coefs_ + clf.intercepts_, model.get_weights()[0::2] + model.get_weights()[1::2]):
        np.testing.assert_array_equal(got, want)
    clf.coefs_[0][...] = 0.0  # on the CPU the network's own arrays, as scikit-learn's coefs_ are its parameters
    np.testing.assert_array_equal(model.get_weights()[0], 0.0)
    new = [np.full_like(b, 0.5) for b in clf.intercepts_]
    clf.intercepts_ = new  # assigning a list writes it into the network
    np.testing.assert_array_equal(model.get_weights()[5], 0.5)
    with pytest.raises(ValueError, match="shape"):
        clf.coefs_ = [np.zeros((2, 2))] * 3
    with pytest.raises(ValueError, match="3 arrays"):
        clf.intercepts_ = new[:2]

    clf.partial_fit(X, y)
    np.testing.assert_array_equal(clf.coefs_[1], clf.model_.get_weights()[2])
    restored = pickle.loads(pickle.dumps(clf))
    for a, b in zip(restored.coefs_ + restored.intercepts_, clf.coefs_ + clf.intercepts_):
        np.testing.assert_array_equal(a, b)

    binary = small_clf(max_iter=1).fit(X, y % 2)
    assert binary.out_activation_ == "logistic" and binary.n_outputs_ == 1 and binary.coefs_[-1].shape == (16, 1)
    reg = small_reg(max_iter=1).fit(X, X[:, :2])
    assert reg.out_activation_ == "identity" and reg.n_outputs_ == 2 and reg.n_layers_ == 3
    unfitted = MLPClassifier()
    assert not hasattr(unfitted, "coefs_") and not hasattr(unfitted, "n_layers_")


def test_ctrl_c_keeps_the_network_and_warns_once(blobs):
    """fit returns normally with what the finished epochs made; one warning (gpunet's fit's, with scikit-learn's
    words), no ConvergenceWarning, and the alpha hook is gone."""
    import os
    import signal

    X, y = blobs
    original = gn.Sequential.fit

    class CtrlC(gn.callbacks.Callback):
        def on_batch_end(self, batch, running_logs):
            if self.trainer.optimizer.steps == 2 * 8 + 3:  # epoch 3, batch 3
                os.kill(os.getpid(), signal.SIGINT)

    def fit_then_interrupt(self, *args, callbacks=None, **kwargs):
        return original(self, *args, callbacks=[*(callbacks or []), CtrlC()], **kwargs)

    for early_stopping, batch in ((False, 30), (True, 24)):  # 8 batches of the 240 or the 192 training rows
        clf = small_clf(max_iter=50, alpha=1e-2, early_stopping=early_stopping, validation_fraction=0.2,
                        batch_size=batch)
        gn.Sequential.fit = fit_then_interrupt
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                clf.fit(X, y)
        finally:
            gn.Sequential.fit = original
        assert [str(w.message)[:29] for w in caught] == ["Training interrupted by user "]
        assert clf.n_iter_ == 2 and len(clf.loss_curve_) == 2 and clf.t_ == 2 * 8 * batch
        assert clf.model_.trainer.gradient_hooks == [] and clf.predict(X[:3]).shape == (3,)
        assert clf.model_.optimizer.steps == 2 * 8 + 3  # the last finished step's weights, as fit warns


# -- scikit-learn machinery ----------------------------------------------------------------------------------------
def test_reproducible_with_random_state(blobs):
    X, y = blobs
    a = small_clf(random_state=3).fit(X, y).predict_proba(X)
    b = small_clf(random_state=3).fit(X, y).predict_proba(X)
    c = small_clf(random_state=4).fit(X, y).predict_proba(X)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    rs = [np.random.RandomState(0), np.random.RandomState(0)]
    np.testing.assert_array_equal(small_clf(random_state=rs[0]).fit(X, y).predict_proba(X),
                                  small_clf(random_state=rs[1]).fit(X, y).predict_proba(X))


def test_tags():
    assert get_tags(MLPClassifier()).non_deterministic
    assert not get_tags(MLPClassifier(random_state=0)).non_deterministic
    tags = get_tags(MLPClassifier())
    assert tags.estimator_type == "classifier" and tags.classifier_tags.multi_class
    assert not tags.classifier_tags.multi_label and not tags.input_tags.sparse and not tags.input_tags.allow_nan
    tags = get_tags(MLPRegressor(random_state=0))
    assert tags.estimator_type == "regressor" and tags.target_tags.multi_output and tags.target_tags.single_output


def test_clone_get_set_params(blobs):
    X, y = blobs
    clf = small_clf(hidden_layer_sizes=(8,), class_weight="balanced").fit(X, y)
    twin = clone(clf)
    assert not hasattr(twin, "model_") and twin.get_params() == clf.get_params()
    with pytest.raises(NotFittedError):
        twin.predict(X)
    twin.set_params(hidden_layer_sizes=(4, 4), learning_rate_init=0.1)
    assert twin.hidden_layer_sizes == (4, 4) and clf.hidden_layer_sizes == (8,)
    assert [d.out_features for d in twin.fit(X, y).model_.layers] == [4, 4, 3]
    assert "hidden_layer_sizes=(4, 4)" in repr(twin)


def test_pickle_and_deepcopy_keep_training_state(blobs):
    X, y = blobs
    clf = small_clf(max_iter=3).fit(X, y)
    for other in (pickle.loads(pickle.dumps(clf)), copy.deepcopy(clf)):
        assert other.model_ is not clf.model_
        np.testing.assert_array_equal(other.predict_proba(X), clf.predict_proba(X))
    restored = pickle.loads(pickle.dumps(clf))
    clf.partial_fit(X, y)
    restored.partial_fit(X, y)  # same optimizer moments and shuffling stream: the same step
    np.testing.assert_array_equal(restored.predict_proba(X), clf.predict_proba(X))
    reg = small_reg(max_iter=2).fit(X, X[:, :2])
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(reg)).predict(X), reg.predict(X))


def test_unpickling_where_the_device_is_unusable_falls_back_to_the_cpu(blobs):
    X, y = blobs
    clf = small_clf(max_iter=2).fit(X, y)
    state = clf.model_.__getstate__()
    state["device"] = "cuda:99"  # as if fitted on a GPU this machine lacks
    with pytest.warns(UserWarning, match="loading it on the CPU"):
        restored = gn.Sequential.__new__(gn.Sequential)
        restored.__setstate__(state)
    assert restored.device == "cpu"
    np.testing.assert_array_equal(gn.to_numpy(restored.predict(X)), gn.to_numpy(clf.model_.predict(X)))


def test_early_stopping_split_errors_name_validation_fraction():
    X, y = np.arange(8.0)[:, None], np.array([0, 0, 0, 0, 0, 0, 0, 1])
    with pytest.raises(ValueError, match="validation_fraction"):
        small_clf(early_stopping=True).fit(X, y)


def test_pipeline_grid_search_and_cross_validation(iris):
    X_train, X_test, y_train, y_test = iris
    pipe = Pipeline([("scale", StandardScaler()), ("mlp", MLPClassifier(max_iter=60, random_state=0))])
    search = GridSearchCV(pipe, {"mlp__hidden_layer_sizes": [(4,), (32,)], "mlp__learning_rate_init": [1e-3, 1e-2]},
                          cv=3)
    search.fit(X_train, y_train)
    assert set(search.best_params_) == {"mlp__hidden_layer_sizes", "mlp__learning_rate_init"}
    assert search.score(X_test, y_test) >= 0.9
    scores = cross_val_score(make_pipeline(StandardScaler(), small_clf(max_iter=60)), X_train, y_train, cv=3)
    assert scores.shape == (3,) and scores.mean() > 0.85
    r2 = cross_val_score(small_reg(), X_train[:, :3], X_train[:, 3], cv=3, n_jobs=2)  # pickled to workers
    assert r2.mean() > 0.5


def test_float32_input_and_auto_device(blobs):
    X, y = blobs
    clf = small_clf(device="auto", max_iter=3).fit(X.astype(np.float32), y)
    assert clf.model_.device == ("cuda:0" if _cuda_ok else "cpu")
    proba = clf.predict_proba(X.astype(np.float32))
    assert isinstance(proba, np.ndarray) and proba.dtype == np.float64


def test_float64_predictions_do_not_depend_on_the_batch(blobs):
    X, y = blobs
    clf = MLPClassifier(dtype="float64", max_iter=3, random_state=0).fit(X, y)
    whole = clf.predict_proba(X)
    rows = np.vstack([clf.predict_proba(X[i:i + 1]) for i in range(len(X))])
    np.testing.assert_allclose(rows, whole, rtol=1e-12, atol=1e-14)


# -- GPU -----------------------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_ok, reason=f"no usable GPU: {_cuda_why}")
@pytest.mark.parametrize("Estimator", [MLPClassifier, MLPRegressor])
def test_cuda_estimator(Estimator, blobs):
    X, y = blobs
    target = y if Estimator is MLPClassifier else X[:, 0] - X[:, 1]
    params = {"hidden_layer_sizes": (32,), "learning_rate_init": 1e-2, "batch_size": 32, "max_iter": 30,
              "random_state": 0}
    gpu_est = Estimator(device="cuda", **params).fit(X, target)
    cpu_est = Estimator(device="cpu", **params).fit(X, target)
    assert gpu_est.model_.device.startswith("cuda")
    pred = gpu_est.predict(X)
    assert isinstance(pred, np.ndarray) and gpu_est.score(X, target) > 0.9
    assert abs(gpu_est.score(X, target) - cpu_est.score(X, target)) < 0.05
    again = Estimator(device="cuda", **params).fit(X, target)  # same seed, same device: the same model
    np.testing.assert_array_equal(again.predict(X), pred)
    restored = pickle.loads(pickle.dumps(gpu_est))
    assert restored.model_.device.startswith("cuda")
    np.testing.assert_array_equal(restored.predict(X), pred)
    restored.partial_fit(X, target)  # the optimizer state moves back to the GPU
    gpu_est.partial_fit(X, target)
    np.testing.assert_array_equal(restored.predict(X), gpu_est.predict(X))
    if Estimator is MLPClassifier:
        assert isinstance(gpu_est.predict_proba(X), np.ndarray)


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_ok, reason=f"no usable GPU: {_cuda_why}")
@pytest.mark.parametrize("Estimator", [MLPClassifier, MLPRegressor])
def test_cuda_estimator_checks(Estimator):
    estimator = Estimator(max_iter=20, random_state=0, device="cuda")
    check_estimator(estimator, expected_failed_checks=expected_failed_checks(estimator))


def test_random_state_none_leaves_numpys_global_state_alone():
    """gpunet never reads or moves NumPy's global RandomState (scikit-learn's own MLP draws from it)."""
    X, y = np.random.default_rng(0).normal(size=(30, 2)), np.arange(30) % 2
    np.random.seed(123)
    before = np.random.get_state()
    MLPClassifier((4,), max_iter=2, random_state=None).fit(X, y)
    after = np.random.get_state()
    assert before[0] == after[0] and np.array_equal(before[1], after[1]) and before[2:] == after[2:]
    fits = [MLPClassifier((4,), max_iter=2, random_state=None).fit(X, y).model_.get_weights()[0] for _ in range(2)]
    assert not np.array_equal(*fits)  # fresh entropy each time
