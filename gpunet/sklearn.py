"""scikit-learn estimators built on :class:`gpunet.Sequential`: :class:`MLPClassifier` and :class:`MLPRegressor`.

They take the constructor of ``sklearn.neural_network.MLPClassifier`` / ``MLPRegressor`` (the same names, defaults
and meanings: ``solver``, ``alpha``, ``batch_size="auto"``, ``learning_rate``, ``learning_rate_init``,
``warm_start``, ``early_stopping``...) and set the same fitted attributes (``coefs_``, ``intercepts_``, ``loss_``,
``loss_curve_``, ``n_iter_``, ``t_``, ``n_layers_``...), so code written for ``sklearn.neural_network`` runs
unchanged; gpunet adds ``device``, ``dtype``, ``weight_decay``, the classifier's ``class_weight`` and the
regressor's ``huber_delta``. They follow scikit-learn's estimator rules (parameters stored verbatim by
``__init__`` and checked in ``fit``), so they work with ``Pipeline``, ``GridSearchCV``, ``clone`` and pickling,
and pass scikit-learn's estimator checks (``tests/test_sklearn.py`` lists the two expected to fail, and why).

scikit-learn is an optional dependency (``pip install 'gpunet[data]'``); ``import gpunet`` never imports it:

>>> from gpunet.sklearn import MLPClassifier
>>> from sklearn.datasets import load_iris
>>> X, y = load_iris(return_X_y=True)
>>> clf = MLPClassifier(hidden_layer_sizes=(16,), learning_rate_init=1e-2, max_iter=1000, random_state=0).fit(X, y)
>>> clf.predict_proba(X[:2]).shape, clf.score(X, y) > 0.9
((2, 3), True)

What is scikit-learn's, to the letter (``tests/test_sklearn_reference.py`` holds each against scikit-learn's own
code):

- Network and initial weights: ``Dense`` hidden layers of ``hidden_layer_sizes`` with ``activation``; the
  classifier ends in one sigmoid output with binary cross-entropy for two classes, a softmax with cross-entropy for
  more; the regressor in a linear layer. Weights *and biases* start uniform in ``+-sqrt(6 / (fan_in + fan_out))``
  (``sqrt(2 / ...)`` for ``activation="logistic"``), drawn as scikit-learn draws them from
  ``RandomState(random_state)``: the same ``random_state`` gives the same initial network as scikit-learn's.
- ``alpha``: each batch's loss gets ``0.5 * alpha * sum(W**2) / n_batch`` over the weight matrices (not the
  biases) and each weight gradient ``alpha * W / n_batch``, ``n_batch`` the batch's rows (a gradient hook of the
  model's trainer, installed for the fit only); ``loss_curve_`` includes the penalty.
- ``batch_size="auto"``: ``min(200, n_samples)``; a larger int is clipped to ``n_samples`` with scikit-learn's
  warning. ``t_`` counts the samples seen; ``n_iter_`` the epochs of the last ``fit``/``partial_fit`` call
  (scikit-learn >= 1.3), while ``loss_curve_`` and ``t_`` go on across ``warm_start`` fits and ``partial_fit``.
- Stopping (``_update_no_improvement_count``): without ``early_stopping`` an epoch counts as no improvement when
  its training loss is not below ``best_loss_ - tol``; with it, when the validation score (accuracy, R^2) is not
  above ``best_validation_score_ + tol``. Training stops once more than ``n_iter_no_change`` epochs in a row did
  not improve; with ``early_stopping`` the weights of the best validation score are put back at the end. With
  ``solver="sgd"``, ``learning_rate="adaptive"`` divides the rate by 5 instead and stops once it is <= 1e-6;
  ``"invscaling"`` sets ``learning_rate_init / (t_ + 1) ** power_t`` at each epoch's end. Running out of
  ``max_iter`` epochs warns with ``ConvergenceWarning``; ``partial_fit`` runs one epoch and never warns.
- ``warm_start=True``: ``fit`` continues from the fitted network (same input width, classes and architecture
  required) with a fresh optimizer, as scikit-learn's; ``partial_fit`` continues the optimizer too.
- SGD with a constant rate: ``torch.optim.SGD(momentum, nesterov=nesterovs_momentum)``, whose update is
  algebraically scikit-learn's (velocity ``v = momentum * v - lr * g``).

Deliberate differences:

- ``solver="lbfgs"`` is refused (gpunet trains by gradient descent, mini-batch, on any device); ``max_fun`` is
  accepted and checked, and has no effect (as in scikit-learn for sgd and adam). gpunet's ``"adamw"``,
  ``"rmsprop"`` and ``"adagrad"`` are extra solvers (rate ``learning_rate_init``, no schedule).
- Adam is ``torch.optim.Adam``: ``p -= lr / (1 - beta_1**t) * m / (sqrt(v) / sqrt(1 - beta_2**t) + epsilon)``;
  scikit-learn's ``AdamOptimizer`` adds ``epsilon`` to ``sqrt(v)`` before the bias correction, which is torch's
  rule with ``epsilon / sqrt(1 - beta_2**t)``: the same steps wherever ``sqrt(v) >> epsilon``, different ones for
  gradients near ``epsilon`` in size.
- SGD with a changing rate (``"invscaling"``, ``"adaptive"``): torch keeps the momentum buffer in gradient units
  and scales all of it by the current rate; scikit-learn's velocity keeps past steps at the rate they were taken.
- ``loss="squared_error"`` trains torch's ``MSELoss``, ``mean((y - p)**2)`` over samples and targets;
  scikit-learn's is half of it (and its gradient ``(p - y) / n`` ignores the number of targets): ``loss_curve_``
  holds twice scikit-learn's squared error, and with ``solver="sgd"`` the steps are ``2 / n_outputs_`` times
  scikit-learn's at the same ``learning_rate_init`` (Adam's steps do not depend on the gradient's scale). The
  regressor also takes ``"absolute_error"`` and ``"huber"`` (``huber_delta``); ``"poisson"`` is refused.
- ``sample_weight`` (times the classifier's ``class_weight``) is rescaled to mean 1 over the training rows, and each
  batch's loss, gradient and ``alpha`` term are divided by the batch's rows where scikit-learn divides by the
  batch's weight sum: the same loss in full-batch training, close with mini-batches; only the weights' ratios
  matter, where scikit-learn's ``alpha`` weakens as all weights grow.
- ``early_stopping``: the held-out ``validation_fraction`` is stratified for every classifier (scikit-learn
  stratifies binary problems only) and drawn from gpunet's generator (the same rows on every warm-start fit). The
  validation score is weighted by ``sample_weight`` as scikit-learn's. Ctrl-C keeps the last step's weights, as
  ``fit`` warns, instead of restoring the best ones.
- ``dtype="float32"`` by default (scikit-learn computes in X's dtype); ``random_state=None`` draws fresh entropy
  instead of NumPy's global ``RandomState``, which gpunet never reads or moves.
- ``verbose`` prints scikit-learn's lines ("Iteration 1, loss = ..."); ``coefs_`` and ``intercepts_`` are the
  network's own arrays on the CPU (editing them edits the network, as in scikit-learn), read-only host copies on a
  GPU; assigning a whole list writes it into the network.
- No multi-label classification, no sparse input; a regressor fitted on ``y`` of shape ``(n, 1)`` predicts
  ``(n, 1)`` (scikit-learn ravels it).

Devices: ``device`` is any gpunet device string (``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"auto"``). Inputs are host
data (NumPy, lists, pandas), moved to the device once per call; every output is a host NumPy array. Pickling (and
``copy.deepcopy``) stores the weights and the optimizer state on the host; unpickling rebuilds the network on the
estimator's ``device``. Ctrl-C ends ``fit`` cleanly: the estimator keeps the network and ``fit`` warns "Training
interrupted by user".
"""

from __future__ import annotations

import math
import numbers

import numpy as np

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import accuracy_score, r2_score
    from sklearn.preprocessing import LabelEncoder
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
from . import training, validation
from .backend import get_backend, to_numpy
from .layers import Dense
from .model import Sequential

__all__ = ["MLPClassifier", "MLPRegressor"]

# scikit-learn's names for activations and losses, mapped to gpunet's
_ACTIVATION_ALIASES = {"identity": "linear", "logistic": "sigmoid"}
_OUT_ACTIVATIONS = {"sigmoid": "logistic", "softmax": "softmax", "linear": "identity"}  # gpunet -> scikit-learn
_LOSS_ALIASES = {"squared_error": "mse", "absolute_error": "mae"}
_SOLVERS = ("adam", "sgd", "adamw", "rmsprop", "adagrad")
_SCHEDULES = ("constant", "invscaling", "adaptive")
_DATA_DTYPES = (np.float64, np.float32)  # X keeps either; anything else becomes float64
_AUTO_BATCH = 200  # batch_size="auto" = min(200, n_samples), scikit-learn's


# -- the pieces of scikit-learn's training loop, as gpunet trainer hooks and callbacks --------------------------------
class _L2Penalty:
    """scikit-learn's ``alpha`` as a gradient hook (``model.trainer.gradient_hooks``): adds ``alpha * W / n_batch``
    to each weight gradient (biases untouched) and returns ``0.5 * alpha * sum(W**2) / n_batch``, which the step adds
    to the batch loss. Computed from the weights the batch's forward used (hooks run before the update)."""

    def __init__(self, alpha: float):
        self.alpha = alpha

    def __call__(self, trainer, grads):
        model = trainer.model
        xp = model.xp
        scale = self.alpha / trainer.batch_rows
        shared = trainer.workspaces.shared if model.ops.reuses_buffers else None
        total = None
        for i, (layer, dW) in enumerate(zip(model.layers, grads[0::2])):
            W = layer.W
            if shared is not None:  # NumPy / CuPy: through one scratch array per layer, nothing allocated per step
                tmp = shared.like(("sklearn_l2", i), W)
                xp.multiply(W, W, out=tmp)
                squares = xp.sum(tmp)
                xp.multiply(W, scale, out=tmp)
                dW += tmp
            else:
                squares = xp.sum(W * W)
                dW += scale * W
            total = squares if total is None else total + squares
        return (0.5 * scale) * total


class _LearningRate(callbacks_mod.LearningRateScheduler):
    """scikit-learn's learning-rate logic on the optimizer's ``lr``: ``SGDOptimizer.iteration_ends`` and
    ``trigger_stopping`` for ``solver="sgd"`` (``schedule`` = its ``learning_rate``), ``BaseOptimizer``'s for the
    others (``schedule="constant"``). The rate changes where scikit-learn changes it, at an epoch's end (called by
    :class:`_NoImprovement`); the rate each epoch used is logged as ``"lr"``."""

    def __init__(self, schedule: str, learning_rate_init: float, power_t: float):
        super().__init__(lambda epoch, lr: lr)
        self.lr_schedule, self.learning_rate_init, self.power_t = schedule, learning_rate_init, power_t

    def iteration_ends(self, time_step: int) -> None:
        if self.lr_schedule == "invscaling":
            self.trainer.optimizer.lr = float(self.learning_rate_init) / (time_step + 1) ** self.power_t

    def trigger_stopping(self, msg: str, verbose) -> bool:
        optimizer = self.trainer.optimizer
        if self.lr_schedule != "adaptive":
            if verbose:
                print(msg + " Stopping.")
            return True
        if optimizer.lr <= 1e-6:
            if verbose:
                print(msg + " Learning rate too small. Stopping.")
            return True
        optimizer.lr /= 5.0
        if verbose:
            print(msg + " Setting learning rate to %f" % optimizer.lr)
        return False


class _NoImprovement(callbacks_mod.Callback):
    """The end of an epoch of scikit-learn's ``_fit_stochastic``: record ``loss_``, ``loss_curve_``, ``t_``,
    ``n_iter_`` on the estimator, update its no-improvement count as ``_update_no_improvement_count`` does
    (keeping the best-score weights with early stopping), let the schedule end the iteration, and stop (or, for
    ``learning_rate="adaptive"``, lower the rate) once the count exceeds ``n_iter_no_change``."""

    def __init__(self, estimator, schedule: _LearningRate, *, n_train: int, held_out, settings: dict):
        self.estimator, self.schedule, self.n_train = estimator, schedule, n_train
        self.held_out = held_out  # (X_val, Y_val on the device, y_val host, sample_weight_val or None) or None
        self.tol, self.n_iter_no_change = settings["tol"], settings["n_iter_no_change"]
        self.early_stopping, self.verbose = settings["early_stopping"], settings["verbose"]
        self.stopped = False

    def on_epoch_end(self, epoch, logs):
        est = self.estimator
        est.n_iter_ += 1
        est.loss_ = float(logs["loss"])
        est.t_ += self.n_train
        est.loss_curve_.append(est.loss_)
        if self.verbose:
            print("Iteration %d, loss = %.8f" % (est.n_iter_, est.loss_))
        self._update_no_improvement_count(logs)
        self.schedule.iteration_ends(est.t_)
        if est._no_improvement_count > self.n_iter_no_change:
            if self.early_stopping:
                msg = ("Validation score did not improve more than tol=%f for %d consecutive epochs."
                       % (self.tol, self.n_iter_no_change))
            else:
                msg = ("Training loss did not improve more than tol=%f for %d consecutive epochs."
                       % (self.tol, self.n_iter_no_change))
            if self.schedule.trigger_stopping(msg, self.verbose):
                self.stopped = True
                self.model.stop_training = True
            else:
                est._no_improvement_count = 0

    def _update_no_improvement_count(self, logs) -> None:
        est = self.estimator
        if self.early_stopping:
            score, val_loss = self._validation_score()
            est.validation_scores_.append(score)
            est.validation_loss_curve_.append(val_loss)
            logs.update(val_loss=val_loss, val_score=score)
            if self.verbose:
                print("Validation score: %f" % est.validation_scores_[-1])
            if score < est.best_validation_score_ + self.tol:
                est._no_improvement_count += 1
            else:
                est._no_improvement_count = 0
            if score > est.best_validation_score_:
                est.best_validation_score_ = score
                est._best_weights = self.model.get_weights()
        else:
            if est.loss_curve_[-1] > est.best_loss_ - self.tol:
                est._no_improvement_count += 1
            else:
                est._no_improvement_count = 0
            if est.loss_curve_[-1] < est.best_loss_:
                est.best_loss_ = est.loss_curve_[-1]

    def _validation_score(self) -> tuple[float, float]:
        """(the estimator's score on the held-out rows, weighted as scikit-learn's; the unweighted loss)."""
        X_val, Y_val, y_val, sw_val = self.held_out
        model = self.model
        pred = model.predict(X_val)
        with model.backend.activate():
            val_loss = float(self.trainer.loss.value(pred, Y_val, model.ops))
        out = np.asarray(to_numpy(pred), dtype=np.float64)
        if not np.isfinite(out).all():  # scikit-learn's _score_with_function
            return float("nan"), val_loss
        return float(self.estimator._score_outputs(out, y_val, sw_val)), val_loss


# -- the estimators ----------------------------------------------------------------------------------------------------
class _BaseMLP(BaseEstimator):
    """What both estimators share: parameter checks, building the network, the training loop, the attributes."""

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=0.0001,
                 batch_size="auto", learning_rate="constant", learning_rate_init=0.001, power_t=0.5, max_iter=200,
                 shuffle=True, random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-8, n_iter_no_change=10, max_fun=15000, weight_decay=0.0, device="cpu",
                 dtype="float32"):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.weight_decay = weight_decay
        self.device = device
        self.dtype = dtype

    # -- what the subclasses define -------------------------------------------------------------------------------
    def _targets(self, y, *, first: bool, warm: bool, classes=None):
        """``y`` (validated) -> ``(Y for gpunet, host int class per row or None)``; sets target attributes."""
        raise NotImplementedError

    def _output_layer(self, n_in: int) -> Dense:
        raise NotImplementedError

    def _loss(self):
        raise NotImplementedError

    def _validate_xy(self, X, y, reset: bool):
        raise NotImplementedError

    def _score_outputs(self, out: np.ndarray, y, sample_weight) -> float:
        """The estimator's ``score`` from network outputs ``out`` ``(n, n_outputs_)`` against validated ``y``."""
        raise NotImplementedError

    # -- fitted attributes read from the network ------------------------------------------------------------------
    @property
    def coefs_(self) -> list:
        """The weight matrices ``(n_in, n_out)`` of the layers, as host arrays: on the CPU the network's own
        arrays (editing them edits the network, as in scikit-learn), elsewhere read-only copies. Assigning a list
        of arrays writes it into the network."""
        return [_host_view(layer.W) for layer in self.model_.layers]

    @coefs_.setter
    def coefs_(self, coefs) -> None:
        self._set_parameters(coefs, 0)

    @property
    def intercepts_(self) -> list:
        """The bias vectors ``(n_out,)`` of the layers (see :attr:`coefs_`)."""
        return [_host_view(layer.b) for layer in self.model_.layers]

    @intercepts_.setter
    def intercepts_(self, intercepts) -> None:
        self._set_parameters(intercepts, 1)

    @property
    def n_layers_(self) -> int:
        """Layers counting the input: ``len(hidden_layer_sizes) + 2``."""
        return len(self.model_.layers) + 1

    @property
    def out_activation_(self) -> str:
        """scikit-learn's name of the output activation: ``"logistic"``, ``"softmax"`` or ``"identity"``."""
        name = self.model_.layers[-1].activation.name
        return _OUT_ACTIVATIONS.get(name, name)

    def _set_parameters(self, arrays, offset: int) -> None:
        check_is_fitted(self, "model_")
        weights = self.model_.get_weights()
        n_layers = len(self.model_.layers)
        if not isinstance(arrays, (list, tuple)) or len(arrays) != n_layers:
            received = (f"a {type(arrays).__name__} of {len(arrays)}" if isinstance(arrays, (list, tuple))
                        else type(arrays).__name__)
            raise ValueError(f"{'coefs_' if offset == 0 else 'intercepts_'} must be a list of {n_layers} arrays, "
                             f"one per layer; received {received}")
        weights[offset::2] = list(arrays)
        self.model_.set_weights(weights)

    # -- scikit-learn protocol ------------------------------------------------------------------------------------
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # weights and shuffling come from random_state; None draws fresh entropy
        tags.non_deterministic = self.random_state is None
        return tags

    # -- fitting --------------------------------------------------------------------------------------------------
    def _fit(self, X, y, sample_weight, *, incremental: bool, classes=None):
        settings = self._settings()
        if incremental and settings["early_stopping"]:
            raise ValueError("partial_fit does not support early_stopping=True")
        first = not hasattr(self, "model_") or (not settings["warm_start"] and not incremental)
        try:
            X, y = self._validate_xy(X, y, reset=first)
            Y, labels = self._targets(y, first=first, warm=not first and not incremental, classes=classes)
            weights = self._weights(X, labels, sample_weight, incremental=incremental)
            if first:
                self.model_ = self._build(X.shape[1], settings)
                self._start_state(settings)
            else:
                self._check_architecture(settings)
            self.n_iter_ = 0
            self._train(X, y, Y, labels, weights, sample_weight, settings, incremental=incremental)
        except BaseException:
            if first:  # a new fit that failed (bad data, diverged...) leaves no half-made estimator behind
                self._forget()
            raise
        return self

    def _start_state(self, settings) -> None:
        """The state scikit-learn's ``_initialize`` makes, which warm-start fits and ``partial_fit`` continue."""
        self.loss_curve_, self.t_, self._no_improvement_count = [], 0, 0
        if settings["early_stopping"]:
            self.validation_scores_, self.validation_loss_curve_ = [], []
            self.best_validation_score_, self.best_loss_ = -np.inf, None
            self._best_weights = self.model_.get_weights()
        else:
            self.best_loss_, self.validation_scores_, self.validation_loss_curve_ = np.inf, None, None
            self.best_validation_score_ = None

    def _forget(self) -> None:
        for name in [k for k in vars(self) if k.endswith("_") and not k.startswith("__")]:
            delattr(self, name)
        for name in ("_best_weights", "_no_improvement_count", "_encoder"):
            self.__dict__.pop(name, None)

    def _train(self, X, y, Y, labels, weights, sample_weight, settings, *, incremental: bool) -> None:
        """scikit-learn's ``_fit_stochastic`` on the gpunet model: one ``model_.fit`` of ``max_iter`` epochs (one
        for ``partial_fit``) with the stopping rule, the schedule and the ``alpha`` hook."""
        model = self.model_
        early = settings["early_stopping"]
        if early and self.validation_scores_ is None:  # a warm start that turns early stopping on
            self.validation_scores_, self.validation_loss_curve_, self.best_validation_score_ = [], [], -np.inf
            self._best_weights, self.best_loss_ = model.get_weights(), None
        if not early and self.best_loss_ is None:  # ... or off
            self.best_loss_ = min(self.loss_curve_, default=np.inf)
        loss = losses_mod.get(self._loss())
        X_train, Y_train, W, held_out = X, Y, weights, None
        if early:
            rows, val_rows = self._split(X.shape[0], labels, settings["validation_fraction"])
            sw_val = None if sample_weight is None else _check_sample_weight(sample_weight, X)[val_rows]
            X_val, Y_val = model._data("X (validation rows)", X[val_rows], "y (validation rows)", Y[val_rows], loss)
            held_out = (X_val, Y_val, y[val_rows], sw_val)
            X_train, Y_train = X[rows], Y[rows]
            W, labels = (None if W is None else W[rows]), (None if labels is None else labels[rows])
        if W is not None:
            W = _mean_one(W, labels, self, check_classes=not incremental)
        n_train = X_train.shape[0]
        batch = self._batch(settings["batch_size"], n_train)

        fresh = not incremental or model.optimizer is None
        schedule = _LearningRate(settings["schedule"] if settings["solver"] == "sgd" else "constant",
                                 settings["learning_rate_init"], settings["power_t"])
        stopper = _NoImprovement(self, schedule, n_train=n_train, held_out=held_out, settings=settings)
        hook = _L2Penalty(settings["alpha"]) if settings["alpha"] > 0 else None
        if hook is not None:
            model.trainer.gradient_hooks.append(hook)
        try:
            history = model.fit(X_train, Y_train, loss=loss,
                                optimizer=settings["optimizer"] if fresh else None,
                                epochs=1 if incremental else settings["max_iter"], batch_size=batch,
                                shuffle=settings["shuffle"], verbose=0, callbacks=[schedule, stopper],
                                sample_weight=W)
        finally:
            if hook is not None:
                model.trainer.gradient_hooks.remove(hook)
        if early and not history.interrupted:  # the weights of the best validation score, as scikit-learn
            model.set_weights(self._best_weights)
        if (not incremental and not history.interrupted and not stopper.stopped
                and self.n_iter_ == settings["max_iter"]):
            validation.warn_at_caller(f"Stochastic Optimizer: Maximum iterations ({settings['max_iter']}) reached "
                                      f"and the optimization hasn't converged yet.", ConvergenceWarning)

    def _split(self, n: int, labels, fraction: float):
        """``(training rows, validation rows)`` for early stopping: stratified by class for the classifier, drawn
        from the model's seed (or its shuffling generator without one)."""
        seed = self.model_.seed
        rng = np.random.default_rng(seed) if seed is not None else self.model_.trainer.shuffle_rng
        try:
            rows, val_rows = training.split_validation(n, fraction, labels, rng)
        except ValueError as exc:
            raise ValueError(str(exc).replace("validation_split", "validation_fraction (early_stopping)")) from exc
        if len(val_rows) < 2:
            raise ValueError("The validation set is too small. Increase 'validation_fraction' or the size of your "
                             f"dataset (validation_fraction={fraction} of {n} samples holds out {len(val_rows)}).")
        return rows, val_rows

    @staticmethod
    def _batch(batch_size, n: int) -> int:
        if batch_size is None:
            return n
        if batch_size == "auto":
            return min(_AUTO_BATCH, n)
        if batch_size > n:
            validation.warn_at_caller("Got `batch_size` less than 1 or larger than sample size. It is going to be "
                                      "clipped")
        return min(batch_size, n)

    def _check_architecture(self, settings) -> None:
        """A warm start or ``partial_fit`` continues the fitted network: the parameters must still describe it."""
        model = self.model_
        sizes = [layer.out_features for layer in model.layers[:-1]]
        acts = {layer.activation.name for layer in model.layers[:-1]}
        if sizes != settings["sizes"] or (sizes and acts != {settings["activation"].name}) \
                or model.dtype != settings["dtype"]:
            raise ValueError(f"warm_start and partial_fit continue the fitted network (hidden layers {sizes}, "
                             f"activation {sorted(acts)}, dtype {model.dtype!r}), which hidden_layer_sizes="
                             f"{self.hidden_layer_sizes!r}, activation={self.activation!r}, dtype={self.dtype!r} no "
                             f"longer describe; set warm_start=False to fit a new network")

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

        solver = self.solver.strip().lower() if isinstance(self.solver, str) else self.solver
        if solver == "lbfgs":
            raise ValueError("solver='lbfgs' is not supported: gpunet trains by gradient descent (mini-batches, on "
                             "any device); use solver='adam' or 'sgd'")
        if solver not in _SOLVERS:
            raise ValueError(f"solver must be one of {list(_SOLVERS)}; received solver={self.solver!r}")
        schedule = self.learning_rate
        if isinstance(schedule, numbers.Real) and not isinstance(schedule, bool):
            raise TypeError(f"learning_rate is scikit-learn's schedule of the rate for solver='sgd' ('constant', "
                            f"'invscaling' or 'adaptive'); received the number learning_rate={schedule!r}: the "
                            f"rate itself is learning_rate_init={schedule!r}")
        if schedule not in _SCHEDULES:
            raise ValueError(f"learning_rate must be one of {list(_SCHEDULES)} (the schedule for solver='sgd'); "
                             f"received learning_rate={schedule!r}")
        lr = validation.positive_number("learning_rate_init", self.learning_rate_init)
        power_t = validation.number_in("power_t", self.power_t, 0.0, math.inf)
        momentum = validation.number_in("momentum", self.momentum, 0.0, 1.0)
        nesterov = _boolean("nesterovs_momentum", self.nesterovs_momentum)
        beta_1 = validation.number_in("beta_1", self.beta_1, 0.0, 1.0)
        beta_2 = validation.number_in("beta_2", self.beta_2, 0.0, 1.0)
        epsilon = validation.positive_number("epsilon", self.epsilon)
        decay = validation.number_in("weight_decay", self.weight_decay, 0.0, math.inf)
        if solver == "sgd":
            optimizer = optim_mod.SGD(lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0,
                                      weight_decay=decay)
        elif solver in ("adam", "adamw"):
            optimizer = optim_mod.OPTIMIZERS[solver](lr=lr, betas=(beta_1, beta_2), eps=epsilon, weight_decay=decay)
        else:
            optimizer = optim_mod.OPTIMIZERS[solver](lr=lr, weight_decay=decay)

        batch_size = self.batch_size
        if not (batch_size is None or (isinstance(batch_size, str) and batch_size == "auto")):
            message = f"batch_size must be 'auto', a positive integer or None; received {batch_size!r}"
            if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral):
                raise TypeError(message)
            if batch_size <= 0:
                raise ValueError(message)
            batch_size = int(batch_size)
        early_stopping = _boolean("early_stopping", self.early_stopping)
        fraction = validation.number_in("validation_fraction", self.validation_fraction, 0.0, 1.0)
        if early_stopping and fraction == 0:
            raise ValueError("validation_fraction must be in (0, 1) with early_stopping=True; received 0.0")
        n_iter_no_change = self.n_iter_no_change
        if not (isinstance(n_iter_no_change, numbers.Real) and n_iter_no_change == math.inf):
            n_iter_no_change = validation.positive_int("n_iter_no_change (a positive integer or numpy.inf)",
                                                       n_iter_no_change)
        verbose = self.verbose
        if not isinstance(verbose, (bool, np.bool_, numbers.Integral)) or verbose < 0:
            raise ValueError(f"verbose must be a boolean or a non-negative integer; received verbose={verbose!r}")
        validation.positive_int("max_fun", self.max_fun)  # L-BFGS's, which gpunet does not run: checked only
        if not isinstance(self.device, str):
            raise TypeError(f"device must be a device string ('cpu', 'cuda', 'cuda:N' or 'auto'); received "
                            f"{type(self.device).__name__}: {self.device!r}")
        get_backend(self.device)  # a clear error now for an unusable device
        self._random_state()  # a clear error now for a bad random_state
        return {
            "sizes": sizes, "activation": activation, "solver": solver, "optimizer": optimizer, "schedule": schedule,
            "learning_rate_init": lr, "power_t": power_t,
            "alpha": validation.number_in("alpha", self.alpha, 0.0, math.inf), "batch_size": batch_size,
            "max_iter": validation.positive_int("max_iter", self.max_iter),
            "shuffle": _boolean("shuffle", self.shuffle), "warm_start": _boolean("warm_start", self.warm_start),
            "early_stopping": early_stopping, "validation_fraction": fraction, "n_iter_no_change": n_iter_no_change,
            "tol": validation.number_in("tol", self.tol, 0.0, math.inf), "verbose": bool(verbose),
            "dtype": validation.one_of("dtype", self.dtype, ("float32", "float64")),
        }

    def _random_state(self) -> tuple[np.random.RandomState, int | None]:
        """``(RandomState for the initial weights, seed of the gpunet model)`` from ``random_state``: an int gives
        ``RandomState(int)``, as scikit-learn's ``check_random_state``, and seeds the model's shuffling and split; a
        ``RandomState`` is drawn from (the weights, then the model's seed); ``None`` draws fresh OS entropy (NumPy's
        global random state is never read or moved)."""
        rs = self.random_state
        if rs is None:
            return np.random.RandomState(np.random.MT19937()), None
        if isinstance(rs, numbers.Integral) and not isinstance(rs, bool):
            if not 0 <= rs < 2**32:
                raise ValueError(f"random_state must be an integer in [0, 2**32), a RandomState or None; received "
                                 f"random_state={rs!r}")
            return np.random.RandomState(int(rs)), int(rs)
        if isinstance(rs, np.random.RandomState):
            return rs, None
        raise ValueError(f"random_state must be an integer in [0, 2**32), a numpy.random.RandomState or None; "
                         f"received {type(rs).__name__}: {rs!r}")

    def _build(self, n_features: int, settings: dict) -> Sequential:
        """The network, with scikit-learn's initial weights (``_init_coef``: weights and biases uniform in
        ``+-sqrt(factor / (fan_in + fan_out))``, factor 2 for the logistic activation and 6 otherwise, drawn layer
        by layer, weights then biases)."""
        units = [n_features, *settings["sizes"]]
        layers = [Dense(a, b, settings["activation"], init="zeros") for a, b in zip(units, units[1:])]
        layers.append(self._output_layer(units[-1]))
        rs, seed = self._random_state()
        factor = 2.0 if settings["activation"].name == "sigmoid" else 6.0
        weights = []
        for layer in layers:
            bound = np.sqrt(factor / (layer.in_features + layer.out_features))
            weights.append(rs.uniform(-bound, bound, (layer.in_features, layer.out_features)))
            weights.append(rs.uniform(-bound, bound, layer.out_features))
        if seed is None and self.random_state is not None:  # a RandomState: the model's seed comes from it too
            seed = int(rs.randint(np.iinfo(np.int32).max))
        model = Sequential(layers, device=self.device, dtype=settings["dtype"], seed=seed)
        model.set_weights(weights)
        return model

    def _weights(self, X, labels, sample_weight, *, incremental: bool):
        """Per-sample weights (``sample_weight`` times class weights) as a float64 host array, or ``None``."""
        class_weight = self._class_weights(labels, incremental=incremental)
        if sample_weight is None and class_weight is None:
            return None
        weights = _check_sample_weight(sample_weight, X, dtype=np.float64, ensure_non_negative=True)
        if class_weight is not None:
            weights = weights * class_weight[labels]
        return weights

    def _class_weights(self, labels, *, incremental: bool):
        return None

    # -- inference ------------------------------------------------------------------------------------------------
    def _forward(self, X) -> np.ndarray:
        """The network's outputs for ``X``, as a float64 host array ``(n, n_outputs_)``."""
        check_is_fitted(self, "model_")
        X = validate_data(self, X, reset=False, dtype=_DATA_DTYPES)
        return np.asarray(to_numpy(self.model_.predict(X)), dtype=np.float64)


def _host_view(a) -> np.ndarray:
    """``a`` itself when it is a NumPy array (the network's own parameter), else a read-only host copy."""
    host = to_numpy(a)
    if host is not a:
        host = np.array(host, copy=True)
        host.flags.writeable = False
    return host


def _boolean(name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False; received {type(value).__name__}: {value!r}")
    return bool(value)


def _mean_one(weights: np.ndarray, labels, estimator, *, check_classes: bool) -> np.ndarray:
    """Row weights rescaled to mean 1 (only their ratios matter); checks that some weight is positive, and with
    ``check_classes`` for a classifier that at least two classes keep positive weight."""
    total = weights.sum()
    if not total > 0:
        raise ValueError("sample_weight (times class_weight) must have at least one positive weight")
    if labels is not None and check_classes:
        present = np.unique(labels[weights > 0])
        if present.size < 2:
            raise ValueError(f"{type(estimator).__name__} needs samples of at least 2 classes with positive weight; "
                             f"only class {estimator.classes_[present[0]]!r} has any")
    return weights * (weights.size / total)


_PARAMETERS = """
    Args (scikit-learn's, with its defaults and meanings):
        hidden_layer_sizes: neurons of each hidden layer, e.g. ``(100,)`` or ``(64, 32)``; ``()`` gives a linear
            model.
        activation: hidden-layer activation: ``"relu"``, ``"tanh"``, ``"logistic"``, ``"identity"``, or any gpunet
            activation (``"gelu"``, ``"silu"``...).
        solver: ``"adam"`` (``torch.optim.Adam``) or ``"sgd"`` (``torch.optim.SGD``); gpunet's ``"adamw"``,
            ``"rmsprop"``, ``"adagrad"`` too. ``"lbfgs"`` is refused.
        alpha: L2 penalty ``0.5 * alpha * sum(W**2) / n_batch`` on the weight matrices, added to each batch's loss.
        batch_size: ``"auto"`` = ``min(200, n_samples)``; an int (clipped to ``n_samples``, with a warning);
            gpunet's ``None`` = the whole training set.
        learning_rate: the schedule for ``solver="sgd"``: ``"constant"``, ``"invscaling"`` or ``"adaptive"``.
        learning_rate_init: the (initial) rate.
        power_t: ``"invscaling"``'s exponent.
        max_iter: the most epochs ``fit`` runs.
        shuffle: reshuffle the samples every epoch.
        random_state: int seed (initial weights as scikit-learn draws them, shuffling, validation split), a
            ``RandomState`` (drawn from) or ``None`` (fresh OS entropy).
        tol, n_iter_no_change: stop after more than ``n_iter_no_change`` epochs without an improvement larger than
            ``tol`` (``numpy.inf``: never).
        verbose: print scikit-learn's progress lines.
        warm_start: ``fit`` continues from the fitted network.
        momentum, nesterovs_momentum: SGD's momentum, and whether it is Nesterov's.
        early_stopping, validation_fraction: hold out ``validation_fraction`` (stratified for the classifier) and
            stop on its score, restoring the best weights at the end.
        beta_1, beta_2, epsilon: Adam's.
        max_fun: L-BFGS's (checked, no effect).

    gpunet's (keyword-only):
        weight_decay: the optimizer's weight decay (torch's: every parameter, biases included; decoupled for
            ``"adamw"``).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
        dtype: ``"float32"`` or ``"float64"``: the network's precision."""

_ATTRIBUTES = """
    Attributes (scikit-learn's): coefs_, intercepts_ (per layer, ``(n_in, n_out)`` and ``(n_out,)``), loss_ (the
    last epoch's), best_loss_ (``None`` with early stopping), loss_curve_, validation_scores_ and
    best_validation_score_ (``None`` without early stopping), t_ (samples seen), n_iter_ (epochs of the last call),
    n_layers_, n_outputs_, out_activation_, n_features_in_, feature_names_in_. gpunet's: model_ (the
    :class:`gpunet.Sequential`), validation_loss_curve_ (the held-out loss with early stopping, else ``None``)."""


class MLPClassifier(ClassifierMixin, _BaseMLP):
    __doc__ = """A multi-layer perceptron classifier with the constructor of ``sklearn.neural_network.MLPClassifier``,
    trained by gpunet on any of its devices (see :mod:`gpunet.sklearn` for the differences).
    """ + _PARAMETERS + """
        class_weight: ``None``, ``{label: weight}`` or ``"balanced"`` (``n_samples / (n_classes * count)``),
            multiplied into ``sample_weight``.

    Two classes: one sigmoid output trained with binary cross-entropy (``out_activation_ == "logistic"``); more: a
    softmax with cross-entropy. Labels may be any hashable values (ints, strings...).
    """ + _ATTRIBUTES + """ classes_: the labels, sorted.

    >>> import numpy as np
    >>> X = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]] * 10)
    >>> y = np.array(["no", "yes", "yes", "yes"] * 10)
    >>> clf = MLPClassifier((8,), learning_rate_init=0.05, random_state=0).fit(X, y)
    >>> clf.predict([[0.0, 0.0], [1.0, 1.0]]).tolist(), clf.n_layers_, clf.out_activation_
    (['no', 'yes'], 3, 'logistic')
    """

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, solver="adam", alpha=0.0001,
                 batch_size="auto", learning_rate="constant", learning_rate_init=0.001, power_t=0.5, max_iter=200,
                 shuffle=True, random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-8, n_iter_no_change=10, max_fun=15000, weight_decay=0.0, device="cpu",
                 dtype="float32", class_weight=None):
        super().__init__(
            hidden_layer_sizes, activation, solver=solver, alpha=alpha, batch_size=batch_size,
            learning_rate=learning_rate, learning_rate_init=learning_rate_init, power_t=power_t, max_iter=max_iter,
            shuffle=shuffle, random_state=random_state, tol=tol, verbose=verbose, warm_start=warm_start,
            momentum=momentum, nesterovs_momentum=nesterovs_momentum, early_stopping=early_stopping,
            validation_fraction=validation_fraction, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon,
            n_iter_no_change=n_iter_no_change, max_fun=max_fun, weight_decay=weight_decay, device=device,
            dtype=dtype)
        self.class_weight = class_weight

    def fit(self, X, y, sample_weight=None):
        """Train on ``X`` ``(n, n_features)`` and labels ``y`` ``(n,)``: a new network, or with ``warm_start`` the
        fitted one; returns ``self``."""
        return self._fit(X, y, sample_weight, incremental=False)

    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """One epoch on ``(X, y)``, continuing the current network and its optimizer (a new one on the first
        call, which needs ``classes``, all the labels that will ever be seen); returns ``self``."""
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
        out = self._forward(X)
        return self.classes_[self._decode(out)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = True
        tags.classifier_tags.multi_label = False
        return tags

    # -- internals ------------------------------------------------------------------------------------------------
    @staticmethod
    def _decode(out: np.ndarray) -> np.ndarray:
        """The class index of each row of network outputs (one sigmoid: ``p > 0.5``; softmax: the argmax)."""
        return (out[:, 0] > 0.5).astype(np.int64) if out.shape[1] == 1 else np.argmax(out, axis=1)

    def _score_outputs(self, out, y, sample_weight):
        return accuracy_score(y, self.classes_[self._decode(out)], sample_weight=sample_weight)

    def _validate_xy(self, X, y, reset):
        X, y = validate_data(self, X, y, reset=reset, dtype=_DATA_DTYPES)
        check_classification_targets(y)
        kind = type_of_target(y, input_name="y")
        if kind not in ("binary", "multiclass"):
            raise ValueError(f"{type(self).__name__} takes one label per sample (binary or multiclass targets); "
                             f"y is {kind!r}")
        return X, y

    def _targets(self, y, *, first, warm, classes=None):
        if first:
            self._set_classes(y, classes)
        elif warm:
            present = np.unique(y)
            if not np.array_equal(present, self.classes_):
                raise ValueError(f"warm_start can only be used where `y` has the same classes as in the previous "
                                 f"call to fit. Previously got {self.classes_}, `y` has {present}")
        elif classes is not None and not np.array_equal(np.unique(classes), self.classes_):
            raise ValueError(f"classes={np.unique(classes).tolist()!r} differs from the classes of the first "
                             f"partial_fit call, {self.classes_.tolist()!r}")
        unseen = np.setdiff1d(y, self.classes_)
        if unseen.size:
            raise ValueError(f"y holds labels {unseen.tolist()!r} that are not in classes_ "
                             f"{self.classes_.tolist()!r}")
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
                             f"{self.classes_.tolist()!r}")
        return np.array([float(cw.get(c, 1.0)) for c in self.classes_.tolist()])

    def _output_layer(self, n_in):
        return Dense(n_in, self.n_outputs_, "sigmoid" if self.n_outputs_ == 1 else "softmax", init="zeros")

    def _loss(self):
        return "bce" if self.n_outputs_ == 1 else "cce"


class MLPRegressor(RegressorMixin, _BaseMLP):
    __doc__ = """A multi-layer perceptron regressor with the constructor of ``sklearn.neural_network.MLPRegressor``
    (``loss`` first, as since scikit-learn 1.7), trained by gpunet on any of its devices (see :mod:`gpunet.sklearn`
    for the differences).

    Args:
        loss: ``"squared_error"`` (trained as torch's ``MSELoss``, ``mean((y - p)**2)``: twice scikit-learn's
            half squared error), gpunet's ``"absolute_error"`` and ``"huber"``; ``"poisson"`` is refused.
    """ + _PARAMETERS + """
        huber_delta: the Huber loss's ``delta``.

    ``y`` may be ``(n,)`` or ``(n, n_targets)``: ``predict`` returns the same number of dimensions as the ``y`` of
    the first fit. The output layer is linear and the targets are used as given: scale them (for instance with
    ``sklearn.compose.TransformedTargetRegressor``) when they are far from unit size.
    """ + _ATTRIBUTES + """ validation_scores_ hold R^2.

    >>> import numpy as np
    >>> X = np.linspace(-1, 1, 64)[:, None]
    >>> y = 2 * X[:, 0] + 1
    >>> reg = MLPRegressor(hidden_layer_sizes=(16,), learning_rate_init=1e-2, random_state=0).fit(X, y)
    >>> reg.predict([[0.0], [0.5]]).shape, reg.score(X, y) > 0.99, reg.out_activation_
    ((2,), True, 'identity')
    """

    def __init__(self, loss="squared_error", hidden_layer_sizes=(100,), activation="relu", *, solver="adam",
                 alpha=0.0001, batch_size="auto", learning_rate="constant", learning_rate_init=0.001, power_t=0.5,
                 max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False, warm_start=False,
                 momentum=0.9, nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1, beta_1=0.9,
                 beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_fun=15000, weight_decay=0.0, device="cpu",
                 dtype="float32", huber_delta=1.0):
        super().__init__(
            hidden_layer_sizes, activation, solver=solver, alpha=alpha, batch_size=batch_size,
            learning_rate=learning_rate, learning_rate_init=learning_rate_init, power_t=power_t, max_iter=max_iter,
            shuffle=shuffle, random_state=random_state, tol=tol, verbose=verbose, warm_start=warm_start,
            momentum=momentum, nesterovs_momentum=nesterovs_momentum, early_stopping=early_stopping,
            validation_fraction=validation_fraction, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon,
            n_iter_no_change=n_iter_no_change, max_fun=max_fun, weight_decay=weight_decay, device=device,
            dtype=dtype)
        self.loss = loss
        self.huber_delta = huber_delta

    def fit(self, X, y, sample_weight=None):
        """Train on ``X`` ``(n, n_features)`` and ``y`` ``(n,)`` or ``(n, n_targets)``: a new network, or with
        ``warm_start`` the fitted one; returns ``self``."""
        return self._fit(X, y, sample_weight, incremental=False)

    def partial_fit(self, X, y, sample_weight=None):
        """One epoch on ``(X, y)``, continuing the current network and its optimizer (a new one on the first
        call); returns ``self``."""
        return self._fit(X, y, sample_weight, incremental=True)

    def predict(self, X) -> np.ndarray:
        """Predictions ``(n,)`` for one target (also when fitted on an ``(n, 1)`` ``y``, as scikit-learn's), else
        ``(n, n_targets)``."""
        out = self._forward(X)
        return out[:, 0] if out.shape[1] == 1 else out

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags

    # -- internals ------------------------------------------------------------------------------------------------
    def _score_outputs(self, out, y, sample_weight):
        return r2_score(y, out[:, 0] if np.ndim(y) == 1 else out, sample_weight=sample_weight)

    def _validate_xy(self, X, y, reset):
        return validate_data(self, X, y, reset=reset, dtype=_DATA_DTYPES, multi_output=True, y_numeric=True)

    def _targets(self, y, *, first, warm, classes=None):
        y = np.asarray(y, dtype=np.float64)
        n_outputs = 1 if y.ndim == 1 else y.shape[1]
        if first:
            self._loss()  # check loss and huber_delta before building anything
            self.n_outputs_ = n_outputs
        elif n_outputs != self.n_outputs_:
            raise ValueError(f"y has {n_outputs} target(s) but {type(self).__name__} was fitted on "
                             f"{self.n_outputs_}")
        return y.reshape(len(y), -1), None

    def _output_layer(self, n_in):
        return Dense(n_in, self.n_outputs_, None, init="zeros")

    def _loss(self):
        name = self.loss
        if isinstance(name, str):
            name = name.strip().lower()
            if name == "poisson":
                raise ValueError("loss='poisson' is not supported by gpunet's MLPRegressor (no exponential output "
                                 "layer); use 'squared_error', 'absolute_error' or 'huber'")
            name = _LOSS_ALIASES.get(name, name)
        if name not in ("mse", "mae", "huber"):
            hint = (" (loss is MLPRegressor's first positional parameter since scikit-learn 1.7: pass "
                    "hidden_layer_sizes by keyword)" if not isinstance(self.loss, str) else "")
            raise ValueError(f"loss must be 'squared_error', 'absolute_error' or 'huber'; received "
                             f"loss={self.loss!r}{hint}")
        if name == "huber":
            return losses_mod.Huber(validation.positive_number("huber_delta", self.huber_delta))
        return name
