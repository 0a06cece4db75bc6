"""scikit-learn estimators built on :class:`gpunet.Sequential`: :class:`MLPClassifier` and :class:`MLPRegressor`.

They follow scikit-learn's estimator rules (parameters stored verbatim by ``__init__`` and checked in ``fit``;
fitted attributes end in ``_``), so they work with ``Pipeline``, ``GridSearchCV``, ``cross_val_score``, ``clone``
and pickling, and they pass scikit-learn's estimator checks (see ``tests/test_sklearn.py`` for the few that an MLP
trained by mini-batch gradient descent cannot pass). The parameter names follow ``sklearn.neural_network`` where
the meaning is the same (``hidden_layer_sizes``, ``activation``, ``max_iter``, ``early_stopping``,
``validation_fraction``, ``n_iter_no_change``, ``tol``...), gpunet's elsewhere (``optimizer``, ``device``, ``dtype``).

scikit-learn is an optional dependency (``pip install 'gpunet[data]'``); ``import gpunet`` never imports it:

>>> from gpunet.sklearn import MLPClassifier
>>> from sklearn.datasets import load_iris
>>> X, y = load_iris(return_X_y=True)
>>> clf = MLPClassifier(hidden_layer_sizes=(16,), learning_rate=1e-2, random_state=0).fit(X, y)
>>> clf.predict_proba(X[:2]).shape, clf.score(X, y) > 0.9
((2, 3), True)

Design notes:

- Networks: ``Dense`` hidden layers of ``hidden_layer_sizes`` with ``activation``, then an output layer. The
  classifier ends in a sigmoid with one output and binary cross-entropy for two classes (as scikit-learn's MLP),
  in a softmax with cross-entropy for more; the regressor ends in a linear layer trained on ``loss``.
- Training: ``fit`` re-initialises the network (seeded by ``random_state``) and runs up to ``max_iter`` epochs of
  mini-batches; ``partial_fit`` runs one epoch on the existing network, continuing its optimizer's state.
- Stopping: with ``early_stopping=False`` training stops when the training loss has not dropped by more than
  ``tol`` for ``n_iter_no_change`` epochs (scikit-learn's rule). With ``early_stopping=True`` a stratified
  ``validation_fraction`` of the data is held out, training stops when the validation *loss* stalls the same way,
  and the weights of the best validation epoch are restored. Running out of ``max_iter`` epochs warns with
  ``sklearn.exceptions.ConvergenceWarning``.
- Weights: ``sample_weight`` (and the classifier's ``class_weight``) multiply each sample's loss; they are rescaled
  to average 1 over the samples of each ``fit``/``partial_fit`` call, so only their ratios matter.
- Devices: ``device`` is any gpunet device string (``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"auto"``). Inputs are
  host data (NumPy, lists, pandas), moved to the device once per call; every output is a host NumPy array.
- Pickling (and ``copy.deepcopy``) stores the weights and the optimizer state on the host; unpickling rebuilds the
  network on the estimator's ``device``.
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.preprocessing import LabelEncoder
    from sklearn.utils import check_random_state
    from sklearn.utils.class_weight import compute_class_weight
    from sklearn.utils.multiclass import check_classification_targets, type_of_target
    from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data
except ImportError as _exc:  # scikit-learn missing, or older than 1.6 (no validate_data / __sklearn_tags__)
    raise ImportError(
        "gpunet.sklearn needs scikit-learn >= 1.6, which could not be imported "
        f"({type(_exc).__name__}: {_exc}); install it with `pip install 'gpunet[data]'` or "
        "`pip install 'scikit-learn>=1.6'`"
    ) from _exc

from . import activations as activations_mod
from . import callbacks as callbacks_mod
from . import losses as losses_mod
from . import optim as optim_mod
from . import validation
from .backend import get_backend, to_numpy
from .layers import Dense
from .model import Sequential

__all__ = ["MLPClassifier", "MLPRegressor"]

# scikit-learn's names for activations and losses, mapped to gpunet's
_ACTIVATION_ALIASES = {"identity": "linear", "logistic": "sigmoid"}
_LOSS_ALIASES = {"squared_error": "mse", "absolute_error": "mae"}
_DATA_DTYPES = (np.float64, np.float32)  # X keeps either; anything else becomes float64


class _BaseMLP(BaseEstimator):
    """What both estimators share: parameter checks, building the network, the training loop, pickling."""

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, optimizer="adam", learning_rate=1e-3,
                 momentum=0.9, weight_decay=0.0, batch_size=32, max_iter=200, early_stopping=False,
                 validation_fraction=0.1, n_iter_no_change=10, tol=1e-4, device="cpu", dtype="float32",
                 random_state=None, verbose=0):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_iter = max_iter
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.device = device
        self.dtype = dtype
        self.random_state = random_state
        self.verbose = verbose

    # -- what the subclasses define -------------------------------------------------------------------------------
    _score_metric = None  # the gpunet metric logged on the validation data with early stopping

    def _targets(self, y, *, first: bool, classes=None):
        """``y`` (validated) -> ``(Y for gpunet, host int class per row or None)``; sets target attributes."""
        raise NotImplementedError

    def _output_layer(self, n_in: int) -> Dense:
        raise NotImplementedError

    def _loss(self):
        raise NotImplementedError

    def _validate_xy(self, X, y, reset: bool):
        raise NotImplementedError

    # -- scikit-learn protocol ------------------------------------------------------------------------------------
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # weights and shuffling come from random_state; None draws them from NumPy's global generator
        tags.non_deterministic = self.random_state is None
        return tags

    # -- fitting --------------------------------------------------------------------------------------------------
    def _fit(self, X, y, sample_weight, *, incremental: bool, classes=None):
        first = not (incremental and hasattr(self, "model_"))
        settings = self._settings()
        X, y = self._validate_xy(X, y, reset=first)
        Y, labels = self._targets(y, first=first, classes=classes)
        weights = self._weights(X, labels, sample_weight, incremental=incremental)

        if first:
            self.model_ = self._build(X.shape[1], settings)
            self.loss_curve_ = []
            self.n_iter_ = 0
        try:
            history, stopper = self._train(X, Y, weights, settings, first=first, incremental=incremental)
        except BaseException:
            if first:  # no half-trained network left behind by a new fit that failed (diverged, interrupted...)
                del self.model_
            raise

        self.loss_curve_ = list(self.loss_curve_) + list(history.history["loss"])
        self.n_iter_ += len(history.epoch)
        if stopper is not None and settings["early_stopping"]:
            self.validation_loss_curve_ = list(history.history["val_loss"])
            self.validation_scores_ = list(history.history[f"val_{self._score_metric}"])
            self.best_loss_ = float(stopper.best)
            self.best_validation_score_ = self.validation_scores_[stopper.best_epoch]
        else:
            self.validation_loss_curve_ = self.validation_scores_ = self.best_validation_score_ = None
            self.best_loss_ = float(min(self.loss_curve_))
        if stopper is not None and stopper.stopped_epoch is None and len(history.epoch) == settings["max_iter"]:
            warnings.warn(f"{type(self).__name__}: max_iter={settings['max_iter']} epochs reached and the "
                          f"optimization hasn't converged yet.", ConvergenceWarning, stacklevel=3)
        return self

    def _train(self, X, Y, weights, settings, *, first: bool, incremental: bool):
        """``model_.fit`` for one epoch (``partial_fit``) or up to ``max_iter``; returns ``(history, stopper)``."""
        model = self.model_
        fit_kwargs = dict(loss=self._loss() if first else None, optimizer=settings["optimizer"] if first else None,
                          batch_size=settings["batch_size"], verbose=settings["verbose"], sample_weight=weights)
        if incremental:
            return model.fit(X, Y, epochs=1, **fit_kwargs), None
        monitor = "val_loss" if settings["early_stopping"] else "loss"
        stopper = callbacks_mod.EarlyStopping(monitor, patience=settings["n_iter_no_change"],
                                              min_delta=settings["tol"],
                                              restore_best_weights=settings["early_stopping"])
        try:
            history = model.fit(
                X, Y, epochs=settings["max_iter"], callbacks=[stopper],
                validation_split=settings["validation_fraction"] if settings["early_stopping"] else None,
                metrics=[self._score_metric] if settings["early_stopping"] else None, **fit_kwargs)
        except ValueError as exc:  # name the split by this estimator's parameter
            if "validation_split" not in str(exc):
                raise
            raise ValueError(str(exc).replace("validation_split", "validation_fraction (early_stopping)")) from exc
        return history, stopper

    def _settings(self) -> dict:
        """The parameters, checked (scikit-learn checks in fit, never in __init__ or set_params)."""
        sizes = self.hidden_layer_sizes
        if isinstance(sizes, numbers.Integral) and not isinstance(sizes, bool):
            sizes = (sizes,)
        try:
            sizes = [validation.positive_int("hidden_layer_sizes[i]", s) for s in sizes]
        except TypeError as exc:
            raise TypeError(f"hidden_layer_sizes must be a sequence of positive integers, such as (100,) or "
                            f"(64, 32); received {self.hidden_layer_sizes!r}") from exc
        except ValueError as exc:
            raise ValueError(f"hidden_layer_sizes must hold positive integers; received "
                             f"{self.hidden_layer_sizes!r}") from exc
        activation = self.activation
        if isinstance(activation, str):
            activation = _ACTIVATION_ALIASES.get(activation.strip().lower(), activation)
        activation = activations_mod.get(activation)
        if activation.name == "softmax":
            raise ValueError("activation='softmax' is for output layers; choose another hidden-layer activation")

        if not isinstance(self.optimizer, str) or self.optimizer.strip().lower() not in optim_mod.OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {sorted(optim_mod.OPTIMIZERS)}; received "
                             f"optimizer={self.optimizer!r}")
        name = self.optimizer.strip().lower()
        lr = validation.positive_number("learning_rate", self.learning_rate)
        decay = validation.number_in("weight_decay", self.weight_decay, 0.0, float("inf"))
        kwargs = {"momentum": validation.number_in("momentum", self.momentum, 0.0, 1.0)} if name == "sgd" else {}
        optimizer = optim_mod.OPTIMIZERS[name](lr=lr, weight_decay=decay, **kwargs)

        batch_size = self.batch_size
        if batch_size is not None:
            batch_size = validation.positive_int("batch_size", batch_size)
        if not isinstance(self.early_stopping, (bool, np.bool_)):
            raise TypeError(f"early_stopping must be True or False; received {self.early_stopping!r}")
        fraction = validation.number_in("validation_fraction", self.validation_fraction, 0.0, 1.0)
        if self.early_stopping and fraction == 0:
            raise ValueError("validation_fraction must be in (0, 1) with early_stopping=True; received 0.0")
        tol = validation.number_in("tol", self.tol, 0.0, float("inf"))
        verbose = self.verbose
        if isinstance(verbose, (bool, np.bool_)):
            verbose = int(verbose)
        if verbose not in (0, 1, 2):
            raise ValueError(f"verbose must be 0, 1 or 2; received verbose={self.verbose!r}")
        if not isinstance(self.device, str):
            raise TypeError(f"device must be a device string ('cpu', 'cuda', 'cuda:N' or 'auto'); received "
                            f"{type(self.device).__name__}: {self.device!r}")
        get_backend(self.device)  # a clear error now for an unusable device
        return {
            "sizes": sizes, "activation": activation, "optimizer": optimizer, "batch_size": batch_size,
            "max_iter": validation.positive_int("max_iter", self.max_iter),
            "early_stopping": bool(self.early_stopping), "validation_fraction": fraction,
            "n_iter_no_change": validation.positive_int("n_iter_no_change", self.n_iter_no_change),
            "tol": tol, "verbose": verbose, "dtype": validation.one_of("dtype", self.dtype, ("float32", "float64")),
        }

    def _seed(self) -> int | None:
        """A gpunet seed from ``random_state``: the int itself, one drawn from a given ``RandomState``, or ``None``
        (fresh entropy from the OS: NumPy's global random state is never read or moved)."""
        rs = self.random_state
        if rs is None:
            return None
        if isinstance(rs, numbers.Integral) and not isinstance(rs, bool):
            if rs < 0:
                raise ValueError(f"random_state must be a non-negative integer, a RandomState or None; received "
                                 f"random_state={rs!r}")
            return int(rs)
        return int(check_random_state(rs).randint(np.iinfo(np.int32).max))

    def _build(self, n_features: int, settings: dict) -> Sequential:
        layers, n_in = [], n_features
        for size in settings["sizes"]:
            layers.append(Dense(n_in, size, settings["activation"]))
            n_in = size
        layers.append(self._output_layer(n_in))
        return Sequential(layers, device=self.device, dtype=settings["dtype"], seed=self._seed())

    def _weights(self, X, labels, sample_weight, *, incremental: bool):
        """Per-sample weights (``sample_weight`` times class weights) rescaled to mean 1, or ``None``."""
        class_weight = self._class_weights(labels, incremental=incremental)
        if sample_weight is None and class_weight is None:
            return None
        weights = _check_sample_weight(sample_weight, X, dtype=np.float64, ensure_non_negative=True)
        if class_weight is not None:
            weights = weights * class_weight[labels]
        total = weights.sum()
        if not total > 0:
            raise ValueError("sample_weight (times class_weight) must have at least one positive weight")
        if labels is not None and not incremental:
            present = np.unique(labels[weights > 0])
            if present.size < 2:
                raise ValueError(f"{type(self).__name__} needs samples of at least 2 classes with positive weight; "
                                 f"only class {self.classes_[present[0]]!r} has any")
        return weights * (weights.size / total)

    def _class_weights(self, labels, *, incremental: bool):
        return None

    # -- inference ------------------------------------------------------------------------------------------------
    def _forward(self, X) -> np.ndarray:
        """The network's outputs for ``X``, as a float64 host array ``(n, n_outputs_)``."""
        check_is_fitted(self, "model_")
        X = validate_data(self, X, reset=False, dtype=_DATA_DTYPES)
        return np.asarray(to_numpy(self.model_.predict(X)), dtype=np.float64)


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """A multi-layer perceptron classifier trained by gpunet on any of its devices.

    Args:
        hidden_layer_sizes: neurons of each hidden layer, e.g. ``(100,)`` or ``(64, 32)``; ``()`` gives a linear
            (logistic-regression) model.
        activation: hidden-layer activation, a gpunet name (``"relu"``, ``"tanh"``, ``"sigmoid"``, ``"gelu"``...)
            or scikit-learn's ``"identity"``/``"logistic"``.
        optimizer: ``"adam"``, ``"adamw"``, ``"sgd"``, ``"rmsprop"`` or ``"adagrad"`` (:mod:`gpunet.optim`).
        learning_rate: the optimizer's ``lr``.
        momentum: SGD's momentum (ignored by the other optimizers).
        weight_decay: the optimizer's weight decay (L2 for SGD/Adam/RMSprop/Adagrad, decoupled for AdamW).
        batch_size: samples per gradient step; ``None``: the whole training set.
        max_iter: the most epochs (passes over the data) ``fit`` runs, as scikit-learn's ``max_iter``.
        early_stopping: hold out ``validation_fraction`` (stratified) and stop when the validation loss stalls,
            restoring the best weights; ``False``: stop when the training loss stalls.
        validation_fraction: the held-out fraction with ``early_stopping``.
        n_iter_no_change: epochs without an improvement larger than ``tol`` before stopping.
        tol: the smallest loss decrease that counts as an improvement.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
        dtype: ``"float32"`` or ``"float64"``: the network's precision.
        random_state: int seed (initial weights, shuffling, validation split), a ``RandomState`` (a seed is drawn
            from it) or ``None`` (fresh OS entropy; unlike scikit-learn, NumPy's global random state is not used).
        verbose: 0 silent, 1 a progress bar per epoch, 2 one line per epoch.
        class_weight: ``None``, ``{label: weight}`` or ``"balanced"`` (``n_samples / (n_classes * count)``).

    Two classes: one sigmoid output trained with binary cross-entropy; more: a softmax trained with categorical
    cross-entropy. ``predict_proba`` returns ``(n, n_classes)`` either way. Labels may be any hashable values
    (ints, strings...), as for every scikit-learn classifier.

    Attributes:
        model_: the trained :class:`gpunet.Sequential`. classes_: the labels, sorted. n_features_in_, n_outputs_:
        network input and output sizes. loss_curve_: training loss per epoch. n_iter_: epochs run (``partial_fit``
        adds 1). best_loss_: the best monitored loss (the validation loss with early stopping, else the training
        loss). validation_loss_curve_, validation_scores_ (accuracy), best_validation_score_: per epoch on the
        held-out data with early stopping, else ``None``.

    >>> import numpy as np
    >>> X = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]] * 10)
    >>> y = np.array(["no", "yes", "yes", "yes"] * 10)
    >>> clf = MLPClassifier((8,), learning_rate=0.05, tol=1e-3, random_state=0).fit(X, y)
    >>> clf.predict([[0.0, 0.0], [1.0, 1.0]]).tolist()
    ['no', 'yes']
    """

    _score_metric = "accuracy"

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, optimizer="adam", learning_rate=1e-3,
                 momentum=0.9, weight_decay=0.0, batch_size=32, max_iter=200, early_stopping=False,
                 validation_fraction=0.1, n_iter_no_change=10, tol=1e-4, device="cpu", dtype="float32",
                 random_state=None, verbose=0, class_weight=None):
        super().__init__(hidden_layer_sizes, activation, optimizer=optimizer, learning_rate=learning_rate,
                         momentum=momentum, weight_decay=weight_decay, batch_size=batch_size, max_iter=max_iter,
                         early_stopping=early_stopping, validation_fraction=validation_fraction,
                         n_iter_no_change=n_iter_no_change, tol=tol, device=device, dtype=dtype,
                         random_state=random_state, verbose=verbose)
        self.class_weight = class_weight

    def fit(self, X, y, sample_weight=None):
        """Train a new network on ``X`` ``(n, n_features)`` and labels ``y`` ``(n,)``; returns ``self``."""
        return self._fit(X, y, sample_weight, incremental=False)

    def partial_fit(self, X, y, classes=None, sample_weight=None):
        """One epoch on ``(X, y)``, continuing the current network (a new one on the first call, which needs
        ``classes``, all the labels that will ever be seen). Early stopping does not apply; returns ``self``."""
        if classes is None and not hasattr(self, "model_"):
            raise ValueError("classes must be passed on the first call to partial_fit (all the labels that will "
                             "ever be seen)")
        return self._fit(X, y, sample_weight, incremental=True, classes=classes)

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities ``(n, n_classes)``, columns in the order of ``classes_``; rows sum to 1."""
        out = self._forward(X)
        if out.shape[1] == 1:
            return np.hstack([1.0 - out, out])
        return out / out.sum(axis=1, keepdims=True)

    def predict_log_proba(self, X) -> np.ndarray:
        """``log(predict_proba(X))`` (``-inf`` where a probability underflowed to 0)."""
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def predict(self, X) -> np.ndarray:
        """The most probable label of each row of ``X``."""
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = True
        tags.classifier_tags.multi_label = False
        return tags

    # -- internals ------------------------------------------------------------------------------------------------
    def _validate_xy(self, X, y, reset):
        X, y = validate_data(self, X, y, reset=reset, dtype=_DATA_DTYPES)
        check_classification_targets(y)
        kind = type_of_target(y, input_name="y")
        if kind not in ("binary", "multiclass"):
            raise ValueError(f"{type(self).__name__} takes one label per sample (binary or multiclass targets); "
                             f"y is {kind!r}")
        return X, y

    def _targets(self, y, *, first, classes=None):
        if first:
            self._set_classes(y, classes)
        elif classes is not None and not np.array_equal(np.unique(classes), self.classes_):
            raise ValueError(f"classes={list(np.unique(classes))!r} differs from the classes of the first "
                             f"partial_fit call, {list(self.classes_)!r}")
        unseen = np.setdiff1d(y, self.classes_)
        if unseen.size:
            raise ValueError(f"y holds labels {list(unseen)!r} that are not in classes_ {list(self.classes_)!r}")
        labels = self._encoder.transform(y)
        if len(self.classes_) == 2:
            return labels.astype(np.float64), labels
        return labels, labels

    def _set_classes(self, y, classes) -> None:
        encoder = LabelEncoder().fit(y if classes is None else np.asarray(classes))
        if len(encoder.classes_) < 2:
            raise ValueError(f"{type(self).__name__} needs samples of at least 2 classes; "
                             f"{'y' if classes is None else 'classes'} holds only one class, {encoder.classes_[0]!r}")
        self._encoder, self.classes_ = encoder, encoder.classes_
        self.n_outputs_ = 1 if len(self.classes_) == 2 else len(self.classes_)

    def _class_weights(self, labels, *, incremental):
        cw = self.class_weight
        if cw is None:
            return None
        if isinstance(cw, str) and cw == "balanced":
            if incremental:
                raise ValueError("class_weight='balanced' needs the whole data set: it is not supported by "
                                 "partial_fit; pass a dict {label: weight} computed beforehand")
            return compute_class_weight("balanced", classes=np.arange(len(self.classes_)), y=labels)
        if not isinstance(cw, dict):
            raise ValueError(f"class_weight must be None, 'balanced' or a dict {{label: weight}}; received {cw!r}")
        unknown = [k for k in cw if k not in set(self.classes_.tolist())]
        if unknown:
            raise ValueError(f"class_weight has labels {unknown!r} that are not among the classes "
                             f"{list(self.classes_)!r}")
        return np.array([float(cw.get(c, 1.0)) for c in self.classes_.tolist()])

    def _output_layer(self, n_in):
        return Dense(n_in, self.n_outputs_, "sigmoid" if self.n_outputs_ == 1 else "softmax")

    def _loss(self):
        return "bce" if self.n_outputs_ == 1 else "cce"


class MLPRegressor(RegressorMixin, _BaseMLP):
    """A multi-layer perceptron regressor trained by gpunet on any of its devices.

    Args:
        (as :class:`MLPClassifier`, without ``class_weight``), and
        loss: ``"mse"`` (scikit-learn's ``"squared_error"``), ``"mae"`` (``"absolute_error"``) or ``"huber"``.
        huber_delta: the Huber loss's ``delta``.

    ``y`` may be ``(n,)`` or ``(n, n_targets)``: ``predict`` returns the same number of dimensions as the ``y`` of
    the first fit. The output layer is linear and the targets are used as given: scale them (for instance with
    ``sklearn.compose.TransformedTargetRegressor``) when they are far from unit size.

    Attributes: as :class:`MLPClassifier` without ``classes_``; ``validation_scores_`` holds R^2.

    >>> import numpy as np
    >>> X = np.linspace(-1, 1, 64)[:, None]
    >>> reg = MLPRegressor((16,), learning_rate=1e-2, random_state=0).fit(X, 2 * X[:, 0] + 1)
    >>> reg.predict([[0.0]]).round(1).tolist()
    [1.0]
    """

    _score_metric = "r2"

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, optimizer="adam", learning_rate=1e-3,
                 momentum=0.9, weight_decay=0.0, batch_size=32, max_iter=200, early_stopping=False,
                 validation_fraction=0.1, n_iter_no_change=10, tol=1e-4, device="cpu", dtype="float32",
                 random_state=None, verbose=0, loss="mse", huber_delta=1.0):
        super().__init__(hidden_layer_sizes, activation, optimizer=optimizer, learning_rate=learning_rate,
                         momentum=momentum, weight_decay=weight_decay, batch_size=batch_size, max_iter=max_iter,
                         early_stopping=early_stopping, validation_fraction=validation_fraction,
                         n_iter_no_change=n_iter_no_change, tol=tol, device=device, dtype=dtype,
                         random_state=random_state, verbose=verbose)
        self.loss = loss
        self.huber_delta = huber_delta

    def fit(self, X, y, sample_weight=None):
        """Train a new network on ``X`` ``(n, n_features)`` and ``y`` ``(n,)`` or ``(n, n_targets)``."""
        return self._fit(X, y, sample_weight, incremental=False)

    def partial_fit(self, X, y, sample_weight=None):
        """One epoch on ``(X, y)``, continuing the current network (a new one on the first call)."""
        return self._fit(X, y, sample_weight, incremental=True)

    def predict(self, X) -> np.ndarray:
        """Predictions ``(n,)`` or ``(n, n_targets)``, as the ``y`` the estimator was fitted on."""
        out = self._forward(X)
        return out[:, 0] if self._y_ndim == 1 else out

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags

    # -- internals ------------------------------------------------------------------------------------------------
    def _validate_xy(self, X, y, reset):
        return validate_data(self, X, y, reset=reset, dtype=_DATA_DTYPES, multi_output=True, y_numeric=True)

    def _targets(self, y, *, first, classes=None):
        y = np.asarray(y, dtype=np.float64)
        n_outputs = 1 if y.ndim == 1 else y.shape[1]
        if first:
            self._loss()  # check loss and huber_delta before building anything
            self.n_outputs_, self._y_ndim = n_outputs, y.ndim
        elif n_outputs != self.n_outputs_:
            raise ValueError(f"y has {n_outputs} target(s) but {type(self).__name__} was fitted on "
                             f"{self.n_outputs_}")
        return y.reshape(len(y), -1), None

    def _output_layer(self, n_in):
        return Dense(n_in, self.n_outputs_, None)

    def _loss(self):
        name = self.loss
        if isinstance(name, str):
            name = _LOSS_ALIASES.get(name.strip().lower(), name.strip().lower())
        if name not in ("mse", "mae", "huber"):
            raise ValueError(f"loss must be 'mse' ('squared_error'), 'mae' ('absolute_error') or 'huber'; "
                             f"received loss={self.loss!r}")
        if name == "huber":
            return losses_mod.Huber(validation.positive_number("huber_delta", self.huber_delta))
        return name
