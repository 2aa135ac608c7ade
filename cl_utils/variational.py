"""Variational weight noise and minimum description length (Graves, 2011).

The loss of a network whose weights w are described by a posterior Q(β) under a prior P(α) is

    L(α, β, D) = L^E(β, D) + L^C(α, β),    L^E = ⟨L^N(w, D)⟩_{w~Q(β)},    L^C = KL(Q(β) ‖ P(α)),

with L^N(w, D) = −Σ_n ln p(y_n | x_n, w) the **summed** negative log-likelihood in nats. L is the negative evidence
lower bound and, with bits-back coding, the description length of the training labels (divide by ln 2 for bits).

Two kinds of posterior:

- **delta** (a plain model, e.g. :class:`cl_utils.models.MLP`): Q puts all its mass on w, L^E = L^N(w, D) and
  L^C = −ln P(w | α) (up to the constant of a fixed coding precision). A Gaussian prior gives L2, a Laplace prior L1.
- **Gaussian** (a model whose ``nn.Linear`` layers were replaced by :class:`VariationalLinear`, see
  :func:`make_variational`): q_i = N(μ_i, σ_i²) for every weight and bias, parameterised by μ and log σ². Only a
  Gaussian prior is allowed with it, as in Graves (2011): KL and the adaptive prior are then in closed form.

Conventions. :func:`error_loss` returns the sum over the data by default (Graves' L^E); training minimises the
minibatch estimate of the whole L in nats, ``N · error_loss(batch, reduction="mean") + complexity_loss(...)``
(N: the training set size), not L/N (see :func:`train_variational` for why). One prior covers every parameter of
the network (weights and biases); :func:`train_variational` re-estimates its adaptive parts in closed form
(:meth:`GaussianPrior.fit`, :meth:`LaplacePrior.fit`) before every step.

For the σ² gradient of L^E, :func:`sigma_gradients` returns both the exact reparameterisation gradient and Graves'
shortcut ½ ⟨Σ_n (∂L^N_n/∂w_i)²⟩ from the same weight samples.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checks import positive_int
from .models import forward
from .progress import progress_bar

__all__ = [
    "VariationalLinear",
    "make_variational",
    "variational_layers",
    "is_variational",
    "set_variance",
    "GaussianPrior",
    "LaplacePrior",
    "complexity_loss",
    "error_loss",
    "description_length",
    "error_rate",
    "two_part_length",
    "snr",
    "sigma_gradients",
    "prune",
    "pruning_curve",
    "train_variational",
    "SAMPLING",
]

#: How a :class:`VariationalLinear` draws its weights in training mode.
#: ``"local"``: the local reparameterisation trick (Kingma et al., 2015): each example gets its own weight sample,
#: drawn implicitly as Gaussian pre-activations (cheap, low variance; the default).
#: ``"weights"``: one explicit weight matrix per Monte Carlo sample, shared by the minibatch (needed for per-weight
#: gradients of sampled weights, i.e. Graves' Fisher shortcut in :func:`sigma_gradients`).
SAMPLING = ("local", "weights")

_MIN_SCALE = 1e-12  # floor for adaptive prior scales (a collapsed prior would divide by zero)


def _check_positive(name: str, value: Any) -> None:
    v = value.detach() if isinstance(value, Tensor) else torch.as_tensor(value)
    if v.numel() != 1 or not torch.isfinite(v).all() or not (v > 0).all():
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def _check_finite(name: str, value: Any) -> None:
    v = value.detach() if isinstance(value, Tensor) else torch.as_tensor(value)
    if v.numel() != 1 or not torch.isfinite(v).all():
        raise ValueError(f"{name} must be one finite number, got {value!r}")


def _median(w: Tensor) -> Tensor:
    """The midpoint median: the middle value of an odd count, the mean of the two middle values of an even one.

    (``torch.median`` returns the lower of the two middle values, which leaves Σ sign(w_i − μ̂) = −1, not 0.)
    """
    flat = w.reshape(-1)
    n = flat.numel()
    if n == 0:
        raise ValueError("the median of no weights is undefined")
    lo = flat.median()  # the lower middle value, the n//2-th smallest (0-based) for an even n
    if n % 2:
        return lo
    # the upper middle value: lo again if it fills rank n//2 too (ties), else the smallest value above it
    above = flat.masked_fill(flat <= lo, math.inf).min()
    hi = torch.where((flat <= lo).sum() > n // 2, lo, above)
    return 0.5 * (lo + hi)


def _check_samples(samples: Any) -> None:
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
        raise ValueError(f"samples must be an integer >= 1 (Monte Carlo weight samples), got {samples!r}")


# ------------------------------------------------------------------------------------------------------ the layer


class VariationalLinear(nn.Module):
    """A drop-in for ``nn.Linear`` with a diagonal Gaussian posterior q(w_i) = N(μ_i, σ_i²) on every weight and bias.

    Parameters ``weight_mu``, ``weight_logvar`` (log σ²), ``bias_mu``, ``bias_logvar``. In training mode the forward
    pass samples (see :data:`SAMPLING`); in eval mode it uses the means μ, so ``cl_utils.training.evaluate`` tests
    the mean network. ``learn_var=False`` freezes σ² (fixed weight noise).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        init_var: float = 1e-4,
        learn_var: bool = True,
        sampling: str = "local",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            positive_int(name, value)
        _check_positive("init_var (σ²)", init_var)
        kw = dict(device=device, dtype=dtype)
        self.in_features, self.out_features = in_features, out_features
        init = nn.Linear(in_features, out_features, bias=bias, **kw)  # PyTorch's default initialisation of μ
        self.weight_mu = nn.Parameter(init.weight.detach().clone())
        self.weight_logvar = nn.Parameter(torch.full((out_features, in_features), math.log(init_var), **kw))
        if bias:
            self.bias_mu = nn.Parameter(init.bias.detach().clone())
            self.bias_logvar = nn.Parameter(torch.full((out_features,), math.log(init_var), **kw))
        else:
            self.register_parameter("bias_mu", None)
            self.register_parameter("bias_logvar", None)
        self.sampling = sampling
        self.samples = 1  # Monte Carlo samples the rows of the input are grouped into ("weights" sampling)
        self._record: list[tuple[Tensor, Tensor]] | None = None
        self.learn_var = learn_var

    # -- properties
    @property
    def sampling(self) -> str:
        return self._sampling

    @sampling.setter
    def sampling(self, value: str) -> None:
        if value not in SAMPLING:
            raise ValueError(f"sampling must be one of {SAMPLING}, got {value!r}")
        self._sampling = value

    @property
    def learn_var(self) -> bool:
        return self.weight_logvar.requires_grad

    @learn_var.setter
    def learn_var(self, value: bool) -> None:
        for p in self._logvars():
            p.requires_grad_(bool(value))

    @property
    def weight(self) -> Tensor:
        """The posterior mean of the weights (what the layer uses in eval mode)."""
        return self.weight_mu

    @property
    def bias(self) -> Tensor | None:
        return self.bias_mu

    def _logvars(self) -> list[nn.Parameter]:
        return [p for p in (self.weight_logvar, self.bias_logvar) if p is not None]

    def posterior(self) -> list[tuple[str, Tensor, Tensor]]:
        """``(name, μ, log σ²)`` for the weight and (if any) the bias."""
        out = [("weight", self.weight_mu, self.weight_logvar)]
        if self.bias_mu is not None:
            out.append(("bias", self.bias_mu, self.bias_logvar))
        return out

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, init_var: float = 1e-4, learn_var: bool = True,
                    sampling: str = "local") -> VariationalLinear:
        """A variational layer whose means are the weights of ``linear`` and whose variances are ``init_var``."""
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"from_linear needs an nn.Linear, got {type(linear).__name__}")
        w = linear.weight
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, init_var=init_var,
                    learn_var=learn_var, sampling=sampling, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            layer.weight_mu.copy_(w)
            if linear.bias is not None:
                layer.bias_mu.copy_(linear.bias)
        return layer

    # -- forward
    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return F.linear(x, self.weight_mu, self.bias_mu)
        if self.sampling == "local":
            mean = F.linear(x, self.weight_mu, self.bias_mu)
            bias_var = None if self.bias_logvar is None else self.bias_logvar.exp()
            var = F.linear(x * x, self.weight_logvar.exp(), bias_var)
            # clamped: a unit with no bias and an all-zero input row has var = 0, where sqrt's gradient is inf
            out = mean + var.clamp_min(torch.finfo(var.dtype).tiny).sqrt() * torch.randn_like(mean)
            return self._recorded(x, out)
        # "weights": S explicit weight samples, rows of x grouped as S blocks of equal size
        S = self.samples
        if x.shape[0] % S:
            raise ValueError(f"{x.shape[0]} input rows cannot be split into {S} Monte Carlo samples")
        xs = x.reshape(S, -1, self.in_features)
        w = self.weight_mu + (0.5 * self.weight_logvar).exp() * torch.randn(
            S, *self.weight_mu.shape, device=x.device, dtype=x.dtype)
        if self.bias_mu is not None:
            b = self.bias_mu + (0.5 * self.bias_logvar).exp() * torch.randn(
                S, 1, self.out_features, device=x.device, dtype=x.dtype)
            out = torch.baddbmm(b, xs, w.transpose(1, 2))
        else:
            out = torch.bmm(xs, w.transpose(1, 2))
        return self._recorded(x, out.reshape(x.shape[0], self.out_features))

    def _recorded(self, x: Tensor, out: Tensor) -> Tensor:
        """Keep what Graves' shortcut needs when asked: the layer's input a and its output z (for ∂L/∂z)."""
        if self._record is not None:
            if out.requires_grad:
                out.retain_grad()
            self._record.append((x.detach(), out))
        return out

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias_mu is not None}, sampling={self.sampling!r}, learn_var={self.learn_var}")


def variational_layers(model: nn.Module) -> dict[str, VariationalLinear]:
    """The model's :class:`VariationalLinear` layers by module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, VariationalLinear)}


def is_variational(model: nn.Module) -> bool:
    """True when the model has a Gaussian posterior (at least one :class:`VariationalLinear`)."""
    return bool(variational_layers(model))


def make_variational(model: nn.Module, *, init_var: float = 1e-4, learn_var: bool = True,
                     sampling: str = "local") -> nn.Module:
    """A copy of ``model`` with every ``nn.Linear`` replaced by a :class:`VariationalLinear` with μ = its weights.

    Parameter names stay readable: ``layers.0.weight`` becomes ``layers.0.weight_mu`` and ``layers.0.weight_logvar``.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"make_variational needs an nn.Module, got {type(model).__name__}")
    _check_positive("init_var (σ²)", init_var)
    if sampling not in SAMPLING:
        raise ValueError(f"sampling must be one of {SAMPLING}, got {sampling!r}")
    new = copy.deepcopy(model)
    linears = [(name, m) for name, m in new.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("the model has no nn.Linear layer to make variational")
    for name, lin in linears:
        parent_name, _, child = name.rpartition(".")
        parent = new.get_submodule(parent_name) if parent_name else new
        setattr(parent, child, VariationalLinear.from_linear(lin, init_var=init_var, learn_var=learn_var,
                                                             sampling=sampling))
    others = [n for n, p in new.named_parameters() if not n.endswith(("_mu", "_logvar"))]
    if others:
        raise ValueError(f"only nn.Linear layers can be made variational; these parameters would stay point "
                         f"estimates: {others}")
    return new


def set_variance(model: nn.Module, var: float, *, learn_var: bool | None = None) -> None:
    """Set σ_i² = ``var`` for every weight of a variational model (and optionally freeze/unfreeze σ²)."""
    _check_positive("var (σ²)", var)
    layers = variational_layers(model)
    if not layers:
        raise ValueError("set_variance needs a variational model (see make_variational)")
    with torch.no_grad():
        for layer in layers.values():
            for p in layer._logvars():
                p.fill_(math.log(var))
            if learn_var is not None:
                layer.learn_var = learn_var


@contextmanager
def _sampling(model: nn.Module, mode: str | None = None, samples: int = 1) -> Iterator[None]:
    """Temporarily: training mode (so layers sample), ``samples`` per layer, and optionally another sampling mode."""
    layers = list(variational_layers(model).values())
    saved = [(l.sampling, l.samples) for l in layers]
    was_training = model.training
    model.train()
    try:
        for l in layers:
            l.samples = samples
            if mode is not None:
                l.sampling = mode
        yield
    finally:
        for l, (mode_, s) in zip(layers, saved):
            l.sampling, l.samples = mode_, s
        model.train(was_training)


# ----------------------------------------------------------------------------------------------------- posteriors


def _posterior(model: nn.Module) -> tuple[Tensor, Tensor | None]:
    """All means and variances as flat vectors (variances None for a delta posterior), keeping the graph."""
    layers = variational_layers(model)
    if not layers:
        params = [p for p in model.parameters()]
        if not params:
            raise ValueError("the model has no parameters")
        return torch.cat([p.reshape(-1) for p in params]), None
    named = {n for n, _ in model.named_parameters()}
    covered = {f"{ln}.{pn}_{k}" if ln else f"{pn}_{k}" for ln, l in layers.items() for pn, _, _ in l.posterior()
               for k in ("mu", "logvar")}
    if named - covered:
        raise ValueError("a model mixing variational layers and point-estimate parameters is not supported: "
                         f"{sorted(named - covered)}")
    mus, logvars = [], []
    for layer in layers.values():
        for _, mu, logvar in layer.posterior():
            mus.append(mu.reshape(-1))
            logvars.append(logvar.reshape(-1))
    return torch.cat(mus), torch.cat(logvars).exp()


def _as(value: Any, ref: Tensor) -> Tensor:
    return value.to(device=ref.device, dtype=ref.dtype) if isinstance(value, Tensor) else torch.tensor(
        value, device=ref.device, dtype=ref.dtype)


# ---------------------------------------------------------------------------------------------------------- priors


class _Prior:
    """What both priors share: the two parameters' names, their torch distribution, bin masses, state, repr."""

    _params: tuple[str, str]

    def distribution(self, ref: Tensor) -> torch.distributions.Distribution:  # pragma: no cover - abstract
        raise NotImplementedError

    def log_bin_mass(self, w: Tensor, width: float) -> Tensor:
        """ln P(w_i − width/2 < W < w_i + width/2) for every element (for a two-part code at a fixed precision)."""
        d = self.distribution(w)
        return _log_diff_cdf(d.cdf(w + width / 2), d.cdf(w - width / 2), d.log_prob(w) + math.log(width))

    def state(self) -> dict[str, float]:
        """α as plain numbers."""
        return {name: float(getattr(self, name)) for name in self._params}

    def __repr__(self) -> str:
        values = ", ".join(f"{name}={float(getattr(self, name)):.4g}" for name in self._params)
        adapt = [name for name in self._params if getattr(self, f"adapt_{name}")]
        return f"{type(self).__name__}({values}, adaptive={adapt or 'none'})"


class GaussianPrior(_Prior):
    """P(w | α) = Π_i N(w_i; μ, σ²), one Gaussian for every parameter; α = (μ, σ²).

    ``adapt_mean`` / ``adapt_var`` say which of μ and σ² :meth:`fit` re-estimates in closed form (``adaptive=True``
    sets both). ``mean`` and ``var`` may be tensors that require grad (to check the closed form by autograd).
    """

    _params = ("mean", "var")

    def __init__(self, mean: float | Tensor = 0.0, var: float | Tensor = 1.0, *, adapt_mean: bool = False,
                 adapt_var: bool = False, adaptive: bool | None = None) -> None:
        _check_positive("var (the prior's σ²)", var)
        _check_finite("mean (the prior's μ)", mean)
        if adaptive is not None:
            adapt_mean = adapt_var = bool(adaptive)
        self.mean, self.var = mean, var
        self.adapt_mean, self.adapt_var = bool(adapt_mean), bool(adapt_var)

    # closed forms
    @staticmethod
    def closed_form(mu: Tensor, var: Tensor | None = None, *,
                    mean: Tensor | float | None = None) -> tuple[Tensor, Tensor]:
        """The (μ̂, σ̂²) minimising L^C: μ̂ = mean μ_i, σ̂² = mean[σ_i² + (μ_i − μ̂)²] (σ_i² = 0 for a delta posterior).

        With ``mean`` given (a fixed prior mean), σ̂² is computed around it instead.
        """
        m = mu.mean() if mean is None else _as(mean, mu)
        v = (mu - m).pow(2).mean() if var is None else (var + (mu - m).pow(2)).mean()
        return m, v.clamp_min(_MIN_SCALE)

    @torch.no_grad()
    def fit(self, model: nn.Module) -> GaussianPrior:
        """Re-estimate the adaptive parts of α in closed form from the model's posterior (in place; no host sync)."""
        if not (self.adapt_mean or self.adapt_var):
            return self
        mu, var = _posterior(model)
        mean = mu.mean() if self.adapt_mean else _as(self.mean, mu)
        if self.adapt_var:
            _, self.var = self.closed_form(mu, var, mean=mean)
        self.mean = mean
        return self

    def neg_log_prob(self, w: Tensor) -> Tensor:
        """−ln P(w | α) = Σ_i [½ ln(2πσ²) + (w_i − μ)²/(2σ²)] in nats."""
        m, v = _as(self.mean, w), _as(self.var, w)
        return 0.5 * w.numel() * torch.log(2 * math.pi * v) + (w - m).pow(2).sum() / (2 * v)

    def kl(self, mu: Tensor, var: Tensor) -> Tensor:
        """KL(Q ‖ P) = Σ_i ln(σ/σ_i) + [(μ_i − μ)² + σ_i² − σ²]/(2σ²) in nats, for q_i = N(μ_i, σ_i²)."""
        m, v = _as(self.mean, mu), _as(self.var, mu)
        return (0.5 * torch.log(v / var) + ((mu - m).pow(2) + var - v) / (2 * v)).sum()

    def distribution(self, ref: Tensor) -> torch.distributions.Normal:
        """The prior as a torch distribution, on ``ref``'s device and dtype."""
        return torch.distributions.Normal(_as(self.mean, ref), _as(self.var, ref).sqrt())


class LaplacePrior(_Prior):
    """P(w | α) = Π_i (1/2b) exp(−|w_i − μ|/b), one Laplace for every parameter; α = (μ, b). Delta posteriors only.

    Closed forms (:meth:`fit`): μ̂ = median of w (the midpoint of the two middle values for an even count, so that
    Σ_i sign(w_i − μ̂) = 0), b̂ = mean |w − μ̂|.
    """

    _params = ("mean", "scale")

    def __init__(self, mean: float | Tensor = 0.0, scale: float | Tensor = 1.0, *, adapt_mean: bool = False,
                 adapt_scale: bool = False, adaptive: bool | None = None) -> None:
        _check_positive("scale (the prior's b)", scale)
        _check_finite("mean (the prior's μ)", mean)
        if adaptive is not None:
            adapt_mean = adapt_scale = bool(adaptive)
        self.mean, self.scale = mean, scale
        self.adapt_mean, self.adapt_scale = bool(adapt_mean), bool(adapt_scale)

    @staticmethod
    def closed_form(w: Tensor, *, mean: Tensor | float | None = None) -> tuple[Tensor, Tensor]:
        """(μ̂, b̂) = (median w, mean |w − μ̂|); with ``mean`` given, b̂ is computed around it.

        The median of an even count is the midpoint of the two middle values (see :func:`_median`)."""
        m = _median(w) if mean is None else _as(mean, w)
        return m, (w - m).abs().mean().clamp_min(_MIN_SCALE)

    @torch.no_grad()
    def fit(self, model: nn.Module) -> LaplacePrior:
        """Re-estimate the adaptive parts of α in closed form from the model's weights (in place)."""
        if not (self.adapt_mean or self.adapt_scale):
            return self
        w, var = _posterior(model)
        if var is not None:
            raise ValueError(_LAPLACE_GAUSSIAN)
        mean = _median(w) if self.adapt_mean else _as(self.mean, w)
        if self.adapt_scale:
            _, self.scale = self.closed_form(w, mean=mean)
        self.mean = mean
        return self

    def neg_log_prob(self, w: Tensor) -> Tensor:
        """−ln P(w | α) = Σ_i [ln 2b + |w_i − μ|/b] in nats."""
        m, b = _as(self.mean, w), _as(self.scale, w)
        return w.numel() * torch.log(2 * b) + (w - m).abs().sum() / b

    def distribution(self, ref: Tensor) -> torch.distributions.Laplace:
        """The prior as a torch distribution, on ``ref``'s device and dtype."""
        return torch.distributions.Laplace(_as(self.mean, ref), _as(self.scale, ref))



_LAPLACE_GAUSSIAN = (
    "a Laplace prior cannot be used with a Gaussian posterior (a model with VariationalLinear layers): Graves (2011) "
    "pairs Gaussian posteriors only with a Gaussian prior, for which the KL and the adaptive prior are in closed "
    "form. Use GaussianPrior, or a plain (delta-posterior) model with LaplacePrior."
)


def _log_diff_cdf(hi: Tensor, lo: Tensor, fallback: Tensor) -> Tensor:
    """ln(hi − lo), falling back to the density approximation where the difference underflows."""
    diff = hi - lo
    return torch.where(diff > 1e-30, diff.clamp_min(1e-30).log(), fallback)


def _check_prior(prior: Any) -> None:
    if not isinstance(prior, (GaussianPrior, LaplacePrior)):
        raise ValueError(f"prior must be a GaussianPrior or a LaplacePrior, got {type(prior).__name__}")


# ----------------------------------------------------------------------------------------------------------- losses


def complexity_loss(model: nn.Module, prior: GaussianPrior | LaplacePrior) -> Tensor:
    """L^C in nats: KL(Q ‖ P) for a Gaussian posterior, −ln P(w | α) for a delta posterior (a plain model)."""
    _check_prior(prior)
    mu, var = _posterior(model)
    if var is None:
        return prior.neg_log_prob(mu)
    if isinstance(prior, LaplacePrior):
        raise ValueError(_LAPLACE_GAUSSIAN)
    return prior.kl(mu, var)


def error_loss(model: nn.Module, inputs: Tensor, targets: Tensor, samples: int = 1, *, reduction: str = "sum",
               head: int | Tensor | None = None) -> Tensor:
    """L^E: the cross-entropy (nats) averaged over ``samples`` draws from Q; summed (Graves' L^E) or averaged over data.

    A variational model always samples here, whether it is in training or eval mode (the inputs are repeated
    ``samples`` times, so the S draws run as one batch). For a plain model (delta posterior) this is the plain
    L^N(w, D), and ``samples`` is ignored.
    """
    _check_samples(samples)
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' (Graves' L^E) or 'mean', got {reduction!r}")
    if inputs.ndim != 2 or targets.ndim != 1 or len(inputs) != len(targets) or len(targets) == 0:
        raise ValueError(f"expected inputs N×D and targets of length N > 0, got {tuple(inputs.shape)} and "
                         f"{tuple(targets.shape)}")
    if not is_variational(model):
        loss = F.cross_entropy(forward(model, inputs, head), targets, reduction=reduction)
        return loss
    with _sampling(model, samples=samples):
        x = inputs.repeat(samples, 1) if samples > 1 else inputs
        y = targets.repeat(samples) if samples > 1 else targets
        h = head.repeat(samples) if isinstance(head, Tensor) and samples > 1 else head
        total = F.cross_entropy(forward(model, x, h), y, reduction="sum") / samples
    return total if reduction == "sum" else total / len(targets)


@torch.no_grad()
def description_length(model: nn.Module, prior: GaussianPrior | LaplacePrior, inputs: Tensor, targets: Tensor,
                       samples: int = 1, *, chunk: int = 10_000) -> dict[str, float]:
    """The description length of ``targets`` given ``inputs``: L^E + L^C (bits-back for a Gaussian posterior).

    Returns ``error_nats``, ``complexity_nats``, ``total_nats`` and ``total_bits``. L^E is estimated with ``samples``
    Monte Carlo draws (unbiased; with the local reparameterisation each example gets its own draw). For a delta
    posterior the value is only defined up to the coding precision: use :func:`two_part_length`.
    """
    if not is_variational(model):
        raise ValueError("description_length needs a Gaussian posterior; for a plain model use two_part_length "
                         "(a point mass needs a coding precision)")
    err = sum(error_loss(model, inputs[i:i + chunk], targets[i:i + chunk], samples).double()
              for i in range(0, len(targets), chunk))
    kl = complexity_loss(model, prior).double()
    total = float(err + kl)
    return {"error_nats": float(err), "complexity_nats": float(kl), "total_nats": total,
            "total_bits": total / math.log(2)}


@torch.no_grad()
def two_part_length(model: nn.Module, prior: GaussianPrior | LaplacePrior, inputs: Tensor, targets: Tensor,
                    precisions: Sequence[float] = tuple(2.0 ** -k for k in range(-2, 15)), *,
                    chunk: int = 10_000) -> dict[str, Any]:
    """Description length of a point-estimate network by a two-part code, at the best of ``precisions``.

    For each precision δ the weights are rounded to multiples of δ and sent with the prior's probability of their
    bin, ``Σ_i −log₂ P(bin_i | α)``, then the labels with the rounded network, ``L^N(ŵ, D)/ln 2``. Returns
    ``total_bits``, ``error_bits``, ``complexity_bits`` and ``precision`` at the best δ, and ``by_precision``.
    """
    _check_prior(prior)
    if is_variational(model):
        raise ValueError("two_part_length is for plain (delta-posterior) models; use description_length")
    if not precisions or any(not (p > 0) for p in precisions):
        raise ValueError(f"precisions must be positive numbers, got {precisions!r}")
    params = list(model.parameters())
    saved = [p.detach().clone() for p in params]
    rows = []
    try:
        for delta in precisions:
            for p, s in zip(params, saved):
                p.copy_(torch.round(s / delta) * delta)
            w = torch.cat([p.reshape(-1) for p in params]).double()
            cbits = float(-prior.log_bin_mass(w, delta).sum()) / math.log(2)
            enats = sum(float(error_loss(model, inputs[i:i + chunk], targets[i:i + chunk]))
                        for i in range(0, len(targets), chunk))
            rows.append({"precision": delta, "error_bits": enats / math.log(2), "complexity_bits": cbits,
                         "total_bits": enats / math.log(2) + cbits})
    finally:
        for p, s in zip(params, saved):
            p.copy_(s)
    best = min(rows, key=lambda r: r["total_bits"])
    return {**best, "by_precision": rows}


# ------------------------------------------------------------------------------------------------------ analysis


def snr(model: nn.Module) -> dict[str, Tensor]:
    """The signal-to-noise ratio |μ_i|/σ_i of every weight, keyed by the μ parameter's name (detached)."""
    layers = variational_layers(model)
    if not layers:
        raise ValueError("snr needs a variational model (see make_variational)")
    out = {}
    for lname, layer in layers.items():
        for pname, mu, logvar in layer.posterior():
            key = f"{lname}.{pname}_mu" if lname else f"{pname}_mu"
            out[key] = (mu.detach().abs() * (-0.5 * logvar.detach()).exp())
    return out


def _half_sum_sq_grads(layer: VariationalLinear, a: Tensor, dz: Tensor, scale: float) -> dict[str, Tensor]:
    """½ · scale · Σ_rows (∂L_row/∂w)² for the weight and bias of ``layer``, from inputs a (R×in) and ∂L/∂z (R×out).

    The gradient of one row's loss with respect to the weights it used is the outer product dz_row a_rowᵀ, so the
    sum of its squares is (dz²)ᵀ(a²): no per-example loop, no per-example gradient held in memory.
    """
    d2 = dz.reshape(-1, layer.out_features).pow(2)
    out = {"weight": 0.5 * scale * d2.T @ a.reshape(-1, layer.in_features).pow(2)}
    if layer.bias_mu is not None:
        out["bias"] = 0.5 * scale * d2.sum(0)
    return out


def sigma_gradients(model: nn.Module, inputs: Tensor, targets: Tensor, samples: int = 1, *,
                    labels: str = "data") -> dict[str, dict[str, Tensor]]:
    """∂L^E/∂σ_i² two ways, from the same ``samples`` explicit weight draws (L^E summed over the data).

    - ``"exact"``: the reparameterisation gradient: w = μ + σε, so ∂L^N/∂σ² = (∂L^N/∂w) ε/(2σ), averaged over draws.
    - ``"fisher"``: Graves' (2011) shortcut ½ ⟨Σ_n (∂L^N(w, x_n, y_n)/∂w_i)²⟩, the diagonal of the empirical Fisher.
      With ``labels="model"`` the y_n are drawn from the sampled network itself (the true Fisher, i.e. the
      Gauss-Newton diagonal) instead of the data's labels.

    Uses one explicit weight matrix per draw, shared by all examples (``"weights"`` sampling). Returns
    ``{"exact": {...}, "fisher": {...}}`` keyed by the log σ² parameters' names (``layers.0.weight_logvar``...);
    the model's own state (sampling mode, gradients) is left untouched.
    """
    _check_samples(samples)
    if labels not in ("data", "model"):
        raise ValueError(f"labels must be 'data' (empirical Fisher, Graves) or 'model' (true Fisher), got {labels!r}")
    layers = variational_layers(model)
    if not layers:
        raise ValueError("sigma_gradients needs a variational model (see make_variational)")
    for layer in layers.values():
        layer._record = []
    try:
        with _sampling(model, "weights", samples):
            logits = model(inputs.repeat(samples, 1))
            loss = F.cross_entropy(logits, targets.repeat(samples), reduction="sum")
            fisher_loss = loss
            if labels == "model":
                y_model = torch.distributions.Categorical(logits=logits.detach()).sample()
                fisher_loss = F.cross_entropy(logits, y_model, reduction="sum")
            logvars = [(f"{ln}.{pn}_logvar" if ln else f"{pn}_logvar", lv)
                       for ln, l in layers.items() for pn, _, lv in l.posterior()]
            outs = [l._record[0][1] for l in layers.values()]
            g_logvar = torch.autograd.grad(loss, [lv for _, lv in logvars], retain_graph=True, allow_unused=True)
            deltas = torch.autograd.grad(fisher_loss, outs)
        records = [l._record[0][0] for l in layers.values()]
    finally:
        for layer in layers.values():
            layer._record = None
    exact = {name: (g if g is not None else torch.zeros_like(lv)) / samples / lv.detach().exp()
             for (name, lv), g in zip(logvars, g_logvar)}
    fisher: dict[str, Tensor] = {}
    for (lname, layer), a, dz in zip(layers.items(), records, deltas):
        for pname, value in _half_sum_sq_grads(layer, a, dz, 1.0 / samples).items():
            fisher[f"{lname}.{pname}_logvar" if lname else f"{pname}_logvar"] = value
    return {"exact": exact, "fisher": fisher}


@torch.no_grad()
def prune(model: nn.Module, fraction: float, *, score: str = "snr") -> nn.Module:
    """A copy of ``model`` with the ``fraction`` of its weights (and biases) of lowest score set to zero.

    ``score="snr"``: |μ_i|/σ_i of a variational model (Graves, 2011); ``"magnitude"``: |w_i| (or |μ_i|). The pruned
    means are zeroed, so the pruned network is the mean network with those connections removed.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must lie in [0, 1], got {fraction!r}")
    if score not in ("snr", "magnitude"):
        raise ValueError(f"score must be 'snr' or 'magnitude', got {score!r}")
    if score == "snr" and not is_variational(model):
        raise ValueError("score='snr' needs a variational model; use score='magnitude' for a plain one")
    new = copy.deepcopy(model)
    if is_variational(new):
        targets = [mu for l in variational_layers(new).values() for _, mu, _ in l.posterior()]
        scores = list(snr(new).values()) if score == "snr" else [t.abs() for t in targets]
    else:
        targets = list(new.parameters())
        scores = [t.abs() for t in targets]
    flat = torch.cat([s.reshape(-1) for s in scores])
    k = int(round(fraction * flat.numel()))
    if k == 0:
        return new
    order = flat.argsort()
    mask = torch.ones_like(flat, dtype=torch.bool)
    mask[order[:k]] = False  # exactly k weights removed, ties broken by position
    start = 0
    for t in targets:
        n = t.numel()
        t.mul_(mask[start:start + n].view_as(t).to(t.dtype))
        start += n
    return new


def pruning_curve(model: nn.Module, inputs: Tensor, targets: Tensor, fractions: Sequence[float], *,
                  score: str = "snr") -> dict[str, list[float]]:
    """Error (%) of the mean network on ``(inputs, targets)`` after :func:`prune` at each of ``fractions``."""
    fractions = [float(f) for f in fractions]
    if not fractions:
        raise ValueError("fractions must not be empty")
    errors = [100 * error_rate(prune(model, f, score=score), inputs, targets) for f in fractions]
    return {"fraction": fractions, "error": errors, "score": score}


# ------------------------------------------------------------------------------------------------------- training


@torch.no_grad()
def _error_rate(model: nn.Module, x: Tensor, y: Tensor, chunk: int = 10_000, sampled: bool = False) -> Tensor:
    """Error of the mean network (eval mode), or of sampled weights, as a device tensor."""
    was = model.training
    model.train(sampled)
    with _sampling(model) if sampled else contextlib.nullcontext():
        wrong = sum((model(x[i:i + chunk]).argmax(1) != y[i:i + chunk]).sum() for i in range(0, len(y), chunk))
    model.train(was)
    return wrong.double() / len(y)


def error_rate(model: nn.Module, inputs: Tensor, targets: Tensor, *, sampled: bool = False) -> float:
    """The fraction of ``inputs`` misclassified by the mean network, or with ``sampled=True`` by a network whose
    weights are drawn from Q (one draw per example with the local reparameterisation)."""
    if inputs.ndim != 2 or targets.ndim != 1 or len(inputs) != len(targets) or len(targets) == 0:
        raise ValueError(f"expected inputs N×D and targets of length N > 0, got {tuple(inputs.shape)} and "
                         f"{tuple(targets.shape)}")
    if sampled and not is_variational(model):
        raise ValueError("sampled=True needs a variational model")
    return float(_error_rate(model, inputs, targets, sampled=sampled))


def train_variational(
    model: nn.Module,
    task: Any,
    *,
    prior: GaussianPrior | LaplacePrior | None = None,
    epochs: int = 10,
    batch_size: int = 100,
    samples: int = 1,
    lr: float = 1.0,
    optimizer: str = "adadelta",
    val: tuple[Tensor, Tensor] | None = None,
    patience: int | None = None,
    sigma_grad: str = "exact",
    seed: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Minimise L = L^E + L^C on ``task``'s training split with minibatches (Graves, 2011).

    Each step: re-estimate the adaptive parts of ``prior`` in closed form, then one optimiser step (Adadelta, the
    same optimiser for μ and log σ²) on the minibatch estimate of the whole loss in nats,
    ``N · error_loss(batch, samples, "mean") + complexity_loss`` (unbiased for L^E + L^C). With ``prior=None`` there is
    no L^C (maximum likelihood, or plain weight noise for a variational model). The loss is not divided by N on
    purpose: Adadelta is invariant to the loss's scale only where gradients are large against its ε (1e-6 in
    the squared gradient), and per-weight gradients of L/N are often smaller than √ε = 1e-3.

    ``sigma_grad`` picks the gradient of L^E for log σ²: ``"exact"`` (the reparameterisation gradient, by
    autograd) or ``"fisher"`` (Graves' shortcut ∂L^E/∂σ_i² ≈ ½ Σ_n ⟨(∂L^N_n/∂w_i)²⟩, always ≥ 0, from the
    per-example gradients of each example's sampled weights; the KL part stays exact).

    Early stopping with ``val=(x, y)`` and ``patience``: after every epoch the error of the mean network on the
    validation set is measured; training stops when it has not improved (strictly) for ``patience`` epochs or after
    ``epochs``, and the network of the best epoch is restored (without ``patience`` the last epoch's is kept).

    ``seed`` fixes the minibatch order (a generator of its own, as in :func:`cl_utils.training.train`); the weight
    noise is drawn from torch's global generator, so call :func:`cl_utils.training.set_seed` first for a run that
    repeats exactly (as :mod:`cl_utils.experiments` does).

    Returns a history dict: ``loss`` (per step, the minibatch estimate of L in nats), ``val_error`` (per epoch),
    ``best_epoch`` (1-based: the epoch of the lowest validation error, the one kept when ``patience`` is given; the
    last epoch without ``val``), ``epochs_run``, ``prior`` (α at the end), ``steps``, ``seconds``.
    """
    from .training import OPTIMIZERS, _model_device

    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        positive_int(name, value)
    _check_samples(samples)
    if prior is not None:
        _check_prior(prior)
        if isinstance(prior, LaplacePrior) and is_variational(model):
            raise ValueError(_LAPLACE_GAUSSIAN)
    if sigma_grad not in ("exact", "fisher"):
        raise ValueError(f"sigma_grad must be 'exact' or 'fisher', got {sigma_grad!r}")
    layers = [l for l in variational_layers(model).values() if l.learn_var] if sigma_grad == "fisher" else []
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {sorted(OPTIMIZERS)}")
    if patience is not None and (val is None or not isinstance(patience, int) or patience < 1):
        raise ValueError("patience must be a positive integer and needs val=(x, y)")
    x, y = task.train_x, task.train_y
    device = _model_device(model)
    if x.device != device:
        raise ValueError(f"the task's data is on {x.device} but the model is on {device}")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = OPTIMIZERS[optimizer](params, lr)
    n = len(y)
    steps_per_epoch = (n + batch_size - 1) // batch_size
    losses = torch.zeros(epochs * steps_per_epoch, device=device)
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    val_errors: list[float] = []
    best, best_epoch, best_state = math.inf, 0, None
    model.train()
    start = time.perf_counter()
    bar = progress_bar(epochs * steps_per_epoch, desc=getattr(task, "name", "train"), enabled=progress)
    step = 0
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=gen).to(device)
        xe, ye = x[perm], y[perm]
        for i in range(0, n, batch_size):
            if prior is not None:
                prior.fit(model)
            for layer in layers:
                layer._record = []
            loss = n * error_loss(model, xe[i:i + batch_size], ye[i:i + batch_size], samples, reduction="mean")
            if prior is not None:
                loss = loss + complexity_loss(model, prior)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if layers:
                _fisher_sigma_step(layers, prior, n)
            opt.step()
            losses[step] = loss.detach()
            step += 1
            bar.update(1)
        if val is not None:
            err = float(_error_rate(model, *val))  # one host sync per epoch
            val_errors.append(err)
            bar.set_postfix(val_error=f"{100 * err:.2f}%")
            if err < best:
                best, best_epoch = err, epoch + 1
                best_state = copy.deepcopy(model.state_dict()) if patience is not None else None
            elif patience is not None and epoch + 1 - best_epoch >= patience:
                break
    bar.close()
    for layer in layers:
        layer._record = None
    if best_state is not None:
        model.load_state_dict(best_state)
    if prior is not None:
        prior.fit(model)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    model.eval()
    return {
        "loss": losses[:step].cpu(),
        "val_error": val_errors,
        "best_epoch": best_epoch if val is not None else epoch + 1,
        "epochs_run": epoch + 1,
        "prior": prior.state() if prior is not None else None,
        "steps": step,
        "seconds": time.perf_counter() - start,
    }


@torch.no_grad()
def _fisher_sigma_step(layers: Sequence[VariationalLinear], prior: GaussianPrior | None, n: int) -> None:
    """Replace the log σ² gradients by Graves' shortcut for L^E plus the exact gradient of L^C.

    The minibatch loss was N × the mean over R rows (examples × samples), so ∂L/∂z_row = (N/R) ∂L_row/∂z_row, and
    ∂L^E/∂σ² ≈ ½ (N/R) Σ_rows (∂L_row/∂w)² = ½ (R/N) Σ_rows (∂L/∂z_row)² a_row²; chain rule: ∂/∂log σ² = σ² ∂/∂σ².
    ∂KL/∂log σ_i² = ½ (σ_i²/σ² − 1) for the Gaussian prior N(μ, σ²).
    """
    for layer in layers:
        (a, z), = layer._record
        layer._record = None
        sq = _half_sum_sq_grads(layer, a, z.grad, len(a) / n)
        for pname, _, logvar in layer.posterior():
            var = logvar.detach().exp()
            grad = var * sq[pname]
            if prior is not None:
                grad = grad + 0.5 * (var / _as(prior.var, var) - 1)
            logvar.grad = grad
