"""The Fisher information of a classifier: its diagonal (fast) and, for small models, the full matrix.

The model's output is read as the logits of a **softmax categorical** distribution p(y | x, θ) (classification,
as in the book), and the Fisher is **averaged over the samples** given:

    F = (1/N) Σₙ E_{y ~ q(y|xₙ)} [ ∇θ log p(y | xₙ, θ) ∇θ log p(y | xₙ, θ)ᵀ ].

``kind`` says which label distribution q is used:

- ``"true"``      the exact expectation over the model's own classes, Σ_c p_c g_c g_cᵀ (no sampling noise);
- ``"sampled"``   one label per sample drawn from the model (an unbiased one-sample Monte Carlo estimate);
- ``"empirical"`` the data's labels (``targets``): not the Fisher proper, but often used in its place;
- ``"batched"``   the shortcut of several libraries: square the gradient of the *mean* loss of a minibatch
                  (data labels) and average over minibatches. Cross terms between samples average out, so it is
                  about ``batch_size`` times smaller than the empirical Fisher.

Why the diagonal is cheap: for a linear layer z = W a + b the per-sample gradient of W is the outer product
δₙ aₙᵀ (δ = ∂ℓ/∂z), so the sum over samples of its squares is Σₙ (δₙ²)(aₙ²)ᵀ = (δ²)ᵀ(a²), one matrix product of
the same size as an ordinary weight gradient. :func:`fisher_diagonal` uses this for every ``nn.Linear`` (and a
per-sample product for ``nn.Conv2d``), capturing a and δ with hooks; for the true Fisher it back-propagates the C
columns of a square root S of the softmax Hessian diag(p) − ppᵀ, S[:, c] = √p_c (e_c − p), all at once (as
BackPACK's ``DiagGGNExact`` does). Any other parameter falls back to per-sample gradients from ``torch.func``
(``vmap`` over ``grad``) in memory-bounded chunks. There is no Python loop over samples.

The model is evaluated in eval mode (dropout off, batch norm on its running statistics, so that samples do not
interact); its own mode is restored afterwards, and no hook is left behind.
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from .checks import positive_int
from .models import forward

__all__ = ["KINDS", "fisher_diagonal", "fisher_matrix", "parameter_names"]

#: The Fisher estimates, see the module docstring.
KINDS = ("true", "sampled", "empirical", "batched")

#: Elements of per-sample gradients held at once by the ``torch.func`` fallback (bounds its memory).
_FALLBACK_BUDGET = 2**24


# ----------------------------------------------------------------------------------------------- validation


def _requested(model: nn.Module) -> dict[str, Tensor]:
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError("the model has no parameter with requires_grad=True; there is no Fisher to compute")
    return params


def parameter_names(model: nn.Module) -> list[str]:
    """The parameter names (``requires_grad`` only) in the order of the rows/columns of :func:`fisher_matrix`."""
    return list(_requested(model))


def _check(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor | None,
    kind: str,
    batch_size: int,
    head: int | Tensor | None,
) -> tuple[dict[str, Tensor], Tensor, Tensor | None, int | Tensor | None]:
    params = _requested(model)
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose one of {KINDS}")
    if not isinstance(inputs, Tensor):
        raise ValueError(f"inputs must be a tensor with one sample per row, got {type(inputs).__name__}")
    if inputs.ndim == 0 or len(inputs) == 0:
        raise ValueError(f"inputs is empty (shape {tuple(inputs.shape)}); the Fisher needs at least one sample")
    positive_int("batch_size", batch_size)
    n = len(inputs)
    if targets is None:
        if kind in ("empirical", "batched"):
            raise ValueError(f"kind={kind!r} uses the data's labels: pass targets (one class index per sample)")
    else:
        if (not isinstance(targets, Tensor) or targets.ndim != 1 or targets.dtype.is_floating_point
                or targets.dtype.is_complex or targets.dtype == torch.bool):
            raise ValueError("targets must be a 1-D tensor of integer class indices")
        if len(targets) != n:
            raise ValueError(f"inputs has {n} samples but targets has {len(targets)}; they must match")
    if isinstance(head, Tensor):
        if head.ndim != 1 or len(head) != n:
            raise ValueError(f"a per-sample head must be a 1-D tensor of length {n}, got shape {tuple(head.shape)}")
    elif head is not None and (not isinstance(head, int) or isinstance(head, bool)):
        raise ValueError(f"head must be None, an int or a 1-D tensor of head indices, got {head!r}")
    ref = next(iter(params.values()))
    if inputs.is_floating_point() and inputs.dtype != ref.dtype:
        raise ValueError(f"inputs are {inputs.dtype} but the model's parameters are {ref.dtype}; convert one of them "
                         f"(e.g. inputs.to({ref.dtype}) or model.to({inputs.dtype}))")
    device = ref.device
    inputs = inputs.to(device)
    targets = targets.to(device) if targets is not None else None
    head = head.to(device) if isinstance(head, Tensor) else head
    return params, inputs, targets, head


def _generator(generator: torch.Generator | int | None, device: torch.device) -> torch.Generator | None:
    if generator is None:
        return None
    if isinstance(generator, torch.Generator):
        if generator.device.type != device.type:
            raise ValueError(f"the generator is on {generator.device} but the model on {device}: pass a generator "
                             f"on {device.type} or an int seed")
        return generator
    if isinstance(generator, int) and not isinstance(generator, bool) and generator >= 0:
        return torch.Generator(device=device).manual_seed(generator)
    raise ValueError(f"generator must be a torch.Generator, a non-negative int seed or None, got {generator!r}")


def _chunks(n: int, size: int) -> Iterator[slice]:
    for i in range(0, n, size):
        yield slice(i, min(i + size, n))


def _head_at(head: int | Tensor | None, s: slice) -> int | Tensor | None:
    return head[s] if isinstance(head, Tensor) else head


class _EvalMode:
    """Put the model in eval mode and enable grad; restore every module's own mode afterwards."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.modes = {m: m.training for m in model.modules()}
        self.grad = torch.enable_grad()

    def __enter__(self) -> None:
        self.grad.__enter__()
        self.model.eval()

    def __exit__(self, *exc: object) -> None:
        for m, mode in self.modes.items():
            m.training = mode
        self.grad.__exit__(*exc)


# ------------------------------------------------------------------------------------------ output gradients


def _check_targets(y: Tensor, n_classes: int) -> None:
    if bool((y < 0).any()) or bool((y >= n_classes).any()):
        raise ValueError(f"targets must be class indices in 0..{n_classes - 1}, got values {y.min()}..{y.max()}")


def _output_vectors(
    logits: Tensor, kind: str, y: Tensor | None, generator: torch.Generator | None
) -> Tensor:
    """K×N×C vectors v whose back-propagation gives the per-sample gradients that are squared and summed.

    ``true``: the C columns √p_c (e_c − p) of a square root of diag(p) − ppᵀ (Σ_c v_c v_cᵀ = diag p − ppᵀ).
    ``sampled``/``empirical``: the gradient of −log p(y|x) with respect to the logits, p − e_y (K = 1).
    """
    logits = logits.detach()
    p = logits.softmax(-1)
    n, c = p.shape
    if kind == "true":
        eye = torch.eye(c, dtype=p.dtype, device=p.device)
        return p.sqrt().t()[:, :, None] * (eye[:, None, :] - p[None])
    if kind == "sampled":
        y = torch.multinomial(p.float(), 1, generator=generator).squeeze(1)
    return (p - F.one_hot(y, c).to(p.dtype))[None]


def _chunk_vectors(
    logits: Tensor, kind: str, y: Tensor | None, s: slice, generator: torch.Generator | None
) -> Tensor:
    """:func:`_output_vectors` for the chunk ``s`` of the data, after checking the logits' shape and (on the first
    chunk, once for all the targets) that the empirical kind's targets index the logits."""
    if logits.ndim != 2:
        raise ValueError(f"the model must return N×C logits, got shape {tuple(logits.shape)}")
    if y is not None and s.start == 0 and kind == "empirical":
        _check_targets(y, logits.shape[-1])
    return _output_vectors(logits, kind, y[s] if y is not None else None, generator)


# ------------------------------------------------------------------------------------------------ fast path


class _ParamUses(TorchFunctionMode):
    """Count how often each parameter enters a torch function during a forward pass.

    The outer-product identity holds for a layer's weight only if the layer's own call is its only use: a weight
    tied to another layer, or also used outside its module, must take the general path.
    """

    def __init__(self, params: dict[str, Tensor]) -> None:
        super().__init__()
        self.ids = {id(p) for p in params.values()}
        self.count: dict[int, int] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        for t in tree_leaves((args, kwargs)):
            if isinstance(t, Tensor) and id(t) in self.ids:
                self.count[id(t)] = self.count.get(id(t), 0) + 1
        return func(*args, **kwargs)


class _Recorder:
    """Forward hooks on Linear/Conv2d modules that record each call's input and output."""

    def __init__(self, model: nn.Module, params: dict[str, Tensor]) -> None:
        ids = {id(p) for p in params.values()}
        self.modules: dict[nn.Module, str] = {}
        for name, m in model.named_modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)) and any(
                id(p) in ids for p in (m.weight, m.bias) if p is not None
            ):
                self.modules[m] = name
        self.on = True
        self.calls: dict[nn.Module, list[tuple[Tensor, Tensor, int, int] | None]] = {}
        self.handles = [m.register_forward_hook(self._hook, with_kwargs=True) for m in self.modules]

    def _hook(self, module: nn.Module, args: tuple, kwargs: dict, output: Tensor) -> None:
        if self.on:
            a = args[0] if args else kwargs.get("input")
            if isinstance(a, Tensor) and isinstance(output, Tensor):
                self.calls.setdefault(module, []).append((a, output, a._version, output._version))
            else:  # called in a way the fast path does not know: two entries send it to the general path
                self.calls.setdefault(module, []).extend([None, None])

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

    def usable(self, uses: dict[int, int], n: int) -> dict[nn.Module, tuple[Tensor, Tensor]]:
        """Modules called exactly once, on one row per sample (``n`` rows in and out), whose parameters were used
        only in that call (``uses``: counts by ``id``, from :class:`_ParamUses`) and whose recorded tensors were not
        modified in place afterwards. A layer applied to rows that are not samples (positions merged into the
        batch, a shared constant input) would give wrong squares: it takes the general path."""
        out = {}
        for m, calls in self.calls.items():
            if len(calls) != 1:
                continue
            if any(p is not None and uses.get(id(p), 0) > 1 for p in (m.weight, m.bias)):
                continue
            a, z, va, vz = calls[0]
            if a._version != va or z._version != vz or not z.requires_grad:
                continue
            if a.shape[0] != n or z.shape[0] != n:
                continue
            if isinstance(m, nn.Linear) and a.ndim != 2:
                continue
            if isinstance(m, nn.Conv2d) and (a.ndim != 4 or m.padding_mode != "zeros" or isinstance(m.padding, str)):
                continue
            out[m] = (a, z)
        return out


def _fast_squares(m: nn.Module, a: Tensor, delta: Tensor) -> dict[str, Tensor]:
    """Σ over samples and columns of the squared per-sample gradients of ``m``'s weight and bias.

    ``a``: the layer's input (N×in or N×Cin×H×W); ``delta``: K×N×(output shape), the gradients of the K
    back-propagated vectors with respect to the layer's output.
    """
    out: dict[str, Tensor] = {}
    if isinstance(m, nn.Linear):
        s = delta.square().sum(0)  # N×out: Σ_k δ²
        if m.weight.requires_grad:
            out["weight"] = s.t() @ a.square()  # (δ²)ᵀ(a²): Σₙ of the squared outer products δₙ aₙᵀ
        if m.bias is not None and m.bias.requires_grad:
            out["bias"] = s.sum(0)
        return out
    # Conv2d: the per-sample gradient is a sum over positions, so it is formed (N×out×in·k²) and squared.
    k, n = delta.shape[:2]
    d = delta.reshape(k, n, m.groups, m.out_channels // m.groups, -1)  # K×N×G×O/G×L
    if m.weight.requires_grad:
        cols = F.unfold(a, m.kernel_size, m.dilation, m.padding, m.stride)  # N×(in·k²)×L
        cols = cols.reshape(n, m.groups, -1, cols.shape[-1])  # N×G×(in/G·k²)×L
        w = torch.zeros(m.weight.numel(), dtype=delta.dtype, device=delta.device)
        for s in _chunks(n, max(1, _FALLBACK_BUDGET // (k * m.weight.numel()))):  # bounded per-sample memory
            g = torch.einsum("kngol,ngil->kngoi", d[:, s], cols[s])
            w += g.square().sum((0, 1)).reshape(-1)
        out["weight"] = w.reshape(m.weight.shape)
    if m.bias is not None and m.bias.requires_grad:
        out["bias"] = d.sum(-1).square().sum((0, 1)).reshape(-1)
    return out


# -------------------------------------------------------------------------------------- torch.func fallback


def _per_sample_grads(
    model: nn.Module,
    params: dict[str, Tensor],
    x: Tensor,
    head: int | Tensor | None,
    v: Tensor,
) -> Iterator[tuple[slice, dict[str, Tensor]]]:
    """Per-sample, per-column gradients ∂(v_kₙ · logitsₙ)/∂θ (n×K×param shape) in memory-bounded chunks."""
    fixed = {k: p.detach() for k, p in model.named_parameters()}  # every parameter, so no graph leaks out
    detached = {k: p.detach() for k, p in params.items()}
    size = sum(p.numel() for p in params.values()) * v.shape[0]
    step = max(1, _FALLBACK_BUDGET // max(size, 1))

    def scalar(ps: dict[str, Tensor], xn: Tensor, hn: Tensor | None, vn: Tensor) -> Tensor:
        h = hn[None] if hn is not None else head
        logits = functional_call(model, {**fixed, **ps}, (xn[None],), {"head": h} if h is not None else {})
        return (logits[0] * vn).sum()

    per_column = vmap(grad(scalar), in_dims=(None, None, None, 0))  # over the K vectors
    per_sample = vmap(per_column, in_dims=(None, 0, 0 if isinstance(head, Tensor) else None, 1))
    for s in _chunks(len(x), step):
        h = head[s] if isinstance(head, Tensor) else None
        yield s, per_sample(detached, x[s], h, v[:, s])


def _minibatch_gradients(
    model: nn.Module, params: dict[str, Tensor], x: Tensor, y: Tensor, head: int | Tensor | None, batch_size: int
) -> Iterator[tuple[int, dict[str, Tensor]]]:
    """(size, gradient of the minibatch's mean NLL) for consecutive minibatches: what ``loss.backward()`` gives."""
    for s in _chunks(len(x), batch_size):
        logits = forward(model, x[s], _head_at(head, s))
        if s.start == 0:
            _check_targets(y, logits.shape[-1])
        grads = torch.autograd.grad(F.cross_entropy(logits, y[s]), list(params.values()), allow_unused=True)
        yield s.stop - s.start, {k: g if g is not None else torch.zeros_like(p)
                                 for (k, p), g in zip(params.items(), grads)}


# ----------------------------------------------------------------------------------------------- public API


def fisher_diagonal(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor | None = None,
    *,
    kind: str = "true",
    batch_size: int = 512,
    head: int | Tensor | None = None,
    generator: torch.Generator | int | None = None,
) -> dict[str, Tensor]:
    """The diagonal of the Fisher information of a softmax classifier, averaged over the ``inputs``.

    Args:
        model: any module whose output (via ``cl_utils.models.forward(model, x, head)``) is N×C logits of a
            softmax categorical distribution. Evaluated in eval mode; its mode is restored.
        inputs: N samples (first dimension), on any device (moved to the model's).
        targets: N class indices; needed for ``"empirical"`` and ``"batched"``, ignored otherwise.
        kind: ``"true"``, ``"sampled"``, ``"empirical"`` or ``"batched"`` (see the module docstring).
        batch_size: samples processed at once (bounds memory). For ``"batched"`` it is also the minibatch whose
            mean gradient is squared, so that result depends on it (≈ ``batch_size`` times smaller).
        head: for multi-head models, the head to read (an int) or one head index per sample (a tensor).
        generator: for ``"sampled"``, a ``torch.Generator`` or an int seed (same seed → same result).

    Returns:
        ``{name: tensor}`` for every parameter with ``requires_grad``, keyed and shaped like
        ``model.named_parameters()``: the Fisher diagonal averaged (not summed) over the N samples.
    """
    params, x, y, head = _check(model, inputs, targets, kind, batch_size, head)
    n = len(x)
    sums = {k: torch.zeros_like(p, memory_format=torch.contiguous_format).detach() for k, p in params.items()}
    gen = _generator(generator, x.device)
    if kind == "batched":
        with _EvalMode(model):
            for size, grads in _minibatch_gradients(model, params, x, y, head, batch_size):
                for k, g in grads.items():
                    sums[k] += g.square() * size  # minibatches weighted by their size (the last may be smaller)
        return {k: v / n for k, v in sums.items()}

    recorder = _Recorder(model, params)
    try:
        with _EvalMode(model):
            for s in _chunks(n, batch_size):
                recorder.calls, recorder.on = {}, True
                with _ParamUses(params) as uses:
                    logits = forward(model, x[s], _head_at(head, s))
                recorder.on = False
                v = _chunk_vectors(logits, kind, y, s, gen)  # K×n×C
                fast = recorder.usable(uses.count, s.stop - s.start)
                done: set[str] = set()
                deltas: list[Tensor | None] = []
                if fast:
                    zs = [z for _, z in fast.values()]
                    if len(v) == 1:  # one vector per sample: a plain backward pass
                        deltas = torch.autograd.grad(logits, zs, grad_outputs=v[0], allow_unused=True)
                        deltas = [d[None] if d is not None else None for d in deltas]
                    else:  # the C columns of the true Fisher at once (a vmapped backward pass)
                        deltas = torch.autograd.grad(
                            logits, zs, grad_outputs=v, is_grads_batched=True, allow_unused=True
                        )
                    for (m, (a, z)), d in zip(fast.items(), deltas):
                        if d is None:
                            d = torch.zeros((v.shape[0], *z.shape), dtype=z.dtype, device=z.device)
                        prefix = recorder.modules[m]
                        for pname, sq in _fast_squares(m, a.detach(), d).items():
                            key = f"{prefix}.{pname}" if prefix else pname
                            if key in sums:
                                sums[key] += sq
                                done.add(key)
                del logits, fast, deltas
                recorder.calls = {}  # free the recorded activations before the fallback runs
                rest = {k: p for k, p in params.items() if k not in done}
                if rest:
                    for _, g in _per_sample_grads(model, rest, x[s], _head_at(head, s), v):
                        for k, gk in g.items():
                            sums[k] += gk.square().sum((0, 1))
    finally:
        recorder.remove()
    return {k: v / n for k, v in sums.items()}


def fisher_matrix(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor | None = None,
    *,
    kind: str = "true",
    batch_size: int = 512,
    head: int | Tensor | None = None,
    generator: torch.Generator | int | None = None,
    max_params: int = 20_000,
) -> Tensor:
    """The full P×P Fisher information of a small softmax classifier, averaged over the ``inputs``.

    Same arguments and meaning as :func:`fisher_diagonal`; rows and columns follow :func:`parameter_names`
    (each parameter flattened in row-major order). Built from per-sample gradients (``torch.func``), so memory
    grows as P²: models with more than ``max_params`` parameters are refused (use :func:`fisher_diagonal`).
    """
    params, x, y, head = _check(model, inputs, targets, kind, batch_size, head)
    p_total = sum(p.numel() for p in params.values())
    if p_total > max_params:
        raise ValueError(
            f"the model has {p_total:,} parameters: a full Fisher would hold {p_total**2:,} numbers. "
            f"fisher_matrix allows at most max_params={max_params:,}; use fisher_diagonal for large models"
        )
    ref = next(iter(params.values()))
    n = len(x)
    fisher = torch.zeros(p_total, p_total, dtype=ref.dtype, device=ref.device)
    gen = _generator(generator, x.device)
    with _EvalMode(model):
        if kind == "batched":
            for size, grads in _minibatch_gradients(model, params, x, y, head, batch_size):
                g = torch.cat([gk.reshape(-1) for gk in grads.values()])
                fisher += torch.outer(g, g) * size
            return fisher / n
        for s in _chunks(n, batch_size):
            with torch.no_grad():
                logits = forward(model, x[s], _head_at(head, s))
            v = _chunk_vectors(logits, kind, y, s, gen)
            for _, g in _per_sample_grads(model, params, x[s], _head_at(head, s), v):
                flat = torch.cat([gk.reshape(gk.shape[0] * gk.shape[1], -1) for gk in g.values()], dim=1)
                fisher += flat.t() @ flat
    return fisher / n

