"""Per-sample gradients and curvature products over the adapter's parameters θ_A.

Everything here sees only the parameters that require grad (the adapter), flattened in
``named_parameters`` order into one vector of length d. The frozen backbone enters only through
the forward pass, so a LoRA on a 135M-parameter LM gives d ≈ 5·10^5, not 10^8.

A curvature operator is a symmetric d×d matrix M = Σ_i w_i C_i over the examples of a batch,
seen through products M v, where C_i is example i's

- ``hessian``:       ∇²ℓ_i (exact; may be indefinite for a non-convex model),
- ``gauss_newton``:  J_iᵀ (∂²ℓ_i/∂f²) J_i with J_i = ∂f_i/∂θ_A (PSD whenever ℓ is convex in the
                     outputs f; needs a task that exposes its outputs, see :class:`OutputTask`),
- ``fisher``:        g_i g_iᵀ with g_i = ∇ℓ_i (empirical Fisher, PSD, rank ≤ batch size),
- ``sampled_fisher``: r_i r_iᵀ with r_i = ∇ℓ̃_i, the gradient of the loss of a target drawn from
                     the model's own predictive distribution (the "true" or Monte-Carlo Fisher
                     of K-FAC, and kronfluence's ``compute_train_loss(sample=True)``); for a
                     negative log-likelihood E[r_i r_iᵀ] is the Gauss-Newton C_i, and unlike the
                     empirical Fisher it does not grow with the residuals. Rank ≤ batch × draws,
                     so Woodbury inverts it exactly; needs a :class:`SampledFisherTask`.

Per-sample gradients come three ways, all with the same rows: ``vmap(grad)``
(:func:`per_sample_grads`), layer hooks with Opacus's per-layer rules, one backward pass per
chunk (:func:`per_sample_grads_hooks`), and a per-example loop (the reference). For models too
large for rows of length d, :class:`GradientProjector` gives rows of a fixed length p from the
same hooks, so memory grows with n·p, not n·d.

Weights w_i = 1/|batch| give the mean curvature; a signed weight vector gives a difference of two
curvatures over the same examples (Proposition 2's H^{bat|A} − H^{bat}) with one set of products.

Scores are computed in eval mode: dropout would make a score a random variable (two calls at the
same θ would disagree) and, under ``vmap``, random ops need ``randomness="different"`` while a
per-example loop draws different masks anyway, so the two could never be compared.
"""

from __future__ import annotations

import functools
import itertools
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol, runtime_checkable

import torch
from torch import nn
from torch.func import functional_call, grad, hessian, jacrev, vmap

from bat.errors import ConfigError
from bat.core.protocols import Batch, Task

CURVATURES = ("hessian", "gauss_newton", "fisher", "sampled_fisher")
ROW_CURVATURES = ("fisher", "sampled_fisher")  # outer products of rows: Woodbury inverts them exactly


# --- the adapter's parameters as one vector -------------------------------------------------

def adapter_parameters(model: nn.Module) -> tuple[list[str], list[nn.Parameter]]:
    """Names and tensors of θ_A: the parameters that require grad, in ``named_parameters`` order."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ConfigError("model: no parameter requires grad; attach an adapter (or unfreeze "
                          "the parameters to score) before computing curvature")
    return [name for name, _ in named], [p for _, p in named]


def flat_parameters(model: nn.Module) -> torch.Tensor:
    """θ_A as a detached vector of length d."""
    return torch.cat([p.detach().reshape(-1) for p in adapter_parameters(model)[1]])


def set_flat_parameters(model: nn.Module, theta: torch.Tensor) -> None:
    """Write a vector of length d back into θ_A."""
    params = adapter_parameters(model)[1]
    with torch.no_grad():
        for p, value in zip(params, unflatten(theta, params)):
            p.copy_(value)


def unflatten(vector: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Split a length-d vector into tensors shaped like ``like``, in their dtype and on their device."""
    sizes = [t.numel() for t in like]
    if vector.numel() != sum(sizes):
        raise ValueError(f"vector has {vector.numel()} entries, the parameters {sum(sizes)}")
    return [v.view_as(t).to(device=t.device, dtype=t.dtype) for v, t in zip(torch.split(vector, sizes), like)]


def _flatten(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


@contextmanager
def scoring_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) and no activation checkpointing for the duration of a score;
    restores every module's flags after.

    diffusers checkpoints whenever gradients are on, in eval mode too; its recomputed forward
    would call the hooked layers a second time during :func:`per_sample_grads_hooks`' backward pass.
    """
    flags = [(module, module.training, getattr(module, "gradient_checkpointing", None))
             for module in model.modules()]
    model.eval()
    for module, _, checkpointing in flags:
        if checkpointing:
            module.gradient_checkpointing = False
    try:
        yield
    finally:
        for module, training, checkpointing in flags:
            module.training = training
            if checkpointing:
                module.gradient_checkpointing = checkpointing


@contextmanager
def math_attention() -> Iterator[None]:
    """Route ``scaled_dot_product_attention`` to its math kernel, which has a double backward.

    The fused CPU kernel has neither double backward nor forward AD, so Hessian and
    Gauss-Newton products through a diffusers UNet fail without this. A transformers LM is
    better loaded with ``attn_implementation="eager"``. Per-sample gradients do not use it:
    under ``vmap`` the fused kernel falls back to a per-example loop for attention alone, and
    that measured faster than the batched math kernel (benchmarks/bench_curvature.py).
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        yield


@contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """transformers models inside ``model`` use eager attention for the duration, then their own.

    Their SDPA (and other fused) attention builds its mask with branches on tensor values, which
    ``vmap`` cannot trace ("data-dependent control flow"). Switched with transformers'
    ``set_attn_implementation`` on each outermost model; raises :class:`ConfigError` for a model
    that cannot switch, naming ``attn_implementation="eager"`` to load it with.
    """
    switched = []
    for module in model.modules():
        config = getattr(module, "config", None)
        if (hasattr(module, "set_attn_implementation") and config is not None
                and config._attn_implementation != "eager"
                and not any(module in outer.modules() for outer, _ in switched)):
            switched.append((module, config._attn_implementation))
            module.set_attn_implementation("eager")
    try:
        unswitched = [type(module).__name__ for module, _ in switched
                      if module.config._attn_implementation != "eager"]
        if unswitched:
            raise ConfigError(f"model: {unswitched[0]} cannot switch to eager attention, which "
                              "per-sample gradients (vmap) need; load it with "
                              "attn_implementation=\"eager\"")
        yield
    finally:
        for module, implementation in switched:
            module.set_attn_implementation(implementation)


# --- per-sample gradients -------------------------------------------------------------------

class _TaskLoss(nn.Module):
    """``task.batch_losses(model, ·)`` as a forward, so that ``functional_call`` can swap θ_A."""

    def __init__(self, model: nn.Module, task: Task):
        super().__init__()
        self.model = model
        self.task = task

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.task.batch_losses(self.model, batch)


class _TaskOutputs(nn.Module):
    """``task.batch_outputs(model, ·)`` as a forward, for ``functional_call`` (Gauss-Newton)."""

    def __init__(self, model: nn.Module, task: Task):
        super().__init__()
        self.model = model
        self.task = task

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.task.batch_outputs(self.model, batch)


def batch_size(batch: Batch) -> int:
    return len(next(iter(batch.values())))


def per_sample_grads(model: nn.Module, task: Task, batch: Batch, *,
                     chunk_size: int | None = None,
                     names: Sequence[str] | None = None) -> torch.Tensor:
    """G with rows g_i = ∇_{θ_A} ℓ_i, shape [batch, d], by ``vmap(grad)`` over the examples.

    ``chunk_size`` examples are vectorised at a time, which bounds the memory of the batched
    activations (None: the whole batch at once). ``names``: only these parameters of θ_A, in
    this order (None: all of θ_A); the others stay fixed at their values. A transformers model
    loaded with SDPA attention runs with eager attention for the call (:func:`eager_attention`).
    """
    all_names, all_params = adapter_parameters(model)
    if names is None:
        names, params = all_names, all_params
    else:
        lookup = dict(zip(all_names, all_params))
        params = [lookup[name] for name in names]
    wrapper = _TaskLoss(model, task)
    keys = [f"model.{name}" for name in names]

    def loss_of_one(theta: tuple[torch.Tensor, ...], example: Batch) -> torch.Tensor:
        single = {key: value.unsqueeze(0) for key, value in example.items()}
        return functional_call(wrapper, dict(zip(keys, theta)), (single,))[0]

    if params and torch.is_autocast_enabled(params[0].device.type):
        # vmap(grad) under autocast fails in backward where a half-precision output meets a
        # float32 LayerNorm ("expected scalar type BFloat16 but found Float", torch 2.13 CPU):
        # the same rows, one backward pass per example.
        return per_sample_grads_loop(model, task, batch, params)
    theta = tuple(p.detach() for p in params)
    with scoring_mode(model), eager_attention(model), warnings.catch_warnings():
        # The attention fallback described in math_attention() warns on every call.
        warnings.filterwarnings("ignore", message="There is a performance drop because we have "
                                "not yet implemented the batching rule")
        grads = vmap(grad(loss_of_one), in_dims=(None, 0), chunk_size=chunk_size)(theta, batch)
    return torch.cat([g.reshape(g.shape[0], -1) for g in grads], dim=1)


@functools.cache
def _layer_samplers() -> dict[type, Callable]:
    """Opacus's per-sample gradient rules by layer type (nn.Linear, nn.Conv2d, nn.GroupNorm, …),
    and ours for peft's DoRA magnitude (:func:`_dora_magnitude_samples`); built once."""
    from opacus.grad_sample import GradSampleModule  # importing registers the samplers
    from peft.tuners.lora.dora import DoraLinearLayer

    return {**GradSampleModule.GRAD_SAMPLERS, DoraLinearLayer: _dora_magnitude_samples}


def _dora_magnitude_samples(layer: nn.Module, activations: list[torch.Tensor],
                            backprops: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
    """Per-sample gradients [n, out] of a DoRA magnitude m (peft's ``DoraLinearLayer.weight``).

    DoRA adds y = (m/‖W + sBA‖ − 1)·base + (m/‖W + sBA‖)·s·BAx to the base output, the column
    norm detached as in peft and the DoRA paper (Sec. 4.3), so ∂y/∂m = (base + s·BAx)/‖W + sBA‖
    = (y + base)/m: the hook records that direction [n, …, out] in place of an input, and the
    rule is Σ_t δ_t ⊙ direction_t over every position.
    """
    (direction,) = activations
    product = backprops * direction
    return {layer.weight: product.reshape(product.shape[0], -1, product.shape[-1]).sum(1)}


def per_sample_grads_hooks(model: nn.Module, task: Task, batch: Batch, *,
                           chunk_size: int | None = None, check_rtol: float = 1e-3
                           ) -> torch.Tensor:
    """The rows of :func:`per_sample_grads` from layer hooks: one backward pass per chunk.

    For a layer y = W a (+ b) the gradient of example i is Σ_t δ_{i,t} a_{i,t}ᵀ, the layer's
    inputs a times the gradients δ = ∂(Σ_i ℓ_i)/∂y of its outputs, both caught by hooks during
    one forward and one backward pass of the whole batch. The per-layer rules are Opacus's
    (``opacus.grad_sample``: Linear, Conv1d/2d/3d, GroupNorm, LayerNorm, Embedding, …); the
    hooks are ours rather than Opacus's ``GradSampleModule``, which captures nothing in eval
    mode (scores run in eval mode, see the module docstring) and would route peft's DoRA/LoHa/
    LoKr layers, whose parameters are not a supported layer's own, through its functorch path
    with positional inputs only, which those layers' forwards do not take.

    Falls back to :func:`per_sample_grads` (``vmap``) for

    - parameters no supported layer owns (LoHa/LoKr factors; DoRA's magnitude has its own rule,
      :func:`_dora_magnitude_samples`),
    - parameters of a layer that is also called on something other than the batch, when a loss
      depends on that call (its inputs' first dimension is not the example; DoRA's calls of
      ``lora_A`` and ``lora_B`` on an identity matrix feed a detached norm and are ignored), and
    - parameters of a supported layer that are also used outside its forward: found because
      their per-sample gradients do not sum to the batch gradient that the same backward pass
      gives (relative error above ``check_rtol``, or twice the machine epsilon of the dtype the
      layers computed in under autocast, whichever is larger), so the check costs nothing extra.

    Every hooked layer must see the example as the first dimension of its input, as in
    diffusers' UNet and transformers' LMs. ``chunk_size`` examples share a backward pass
    (None: the whole batch). Returns shape [batch, d], d over θ_A in ``named_parameters``
    order, in the dtype of θ_A.
    """
    return _hooked_rows(model, task, batch, chunk_size, check_rtol, projector=None)


class GradientProjector:
    """A random projection of per-sample gradients that never forms them (LoGra-style).

    For a Linear or Conv2d weight W [out, fan_in] (a Conv2d's fan_in is in·kh·kw) the gradient
    of example i is Σ_t δ_t a_tᵀ; with Gaussian P_out [k_o, out], P_in [k_i, fan_in], entries
    N(0, 1/k), its projection P_out (Σ_t δ_t a_tᵀ) P_inᵀ = Σ_t (P_out δ_t)(P_in a_t)ᵀ is formed
    from the projected inputs and output gradients, so memory holds k_o·k_i numbers per
    example and layer, never out·fan_in (Choe et al., 2024, "What is your data worth to GPT?",
    LoGra; TRAK, Park et al., 2023, projects the full gradient instead). The Kronecker product
    P_out ⊗ P_in is a Johnson-Lindenstrauss map in expectation (E[PᵀP] = I), so inner products
    of gradients, and with them the Gram matrix that the empirical-Fisher Woodbury scores
    depend on, are kept up to an error that falls as 1/√(k_o k_i) (measured on the tiny models
    in tests/test_fast_curvature.py).

    A side no larger than ``dim`` is kept exactly (no projection); biases, norms and
    parameters of other layers are kept exactly (they are small), computed as in
    :func:`per_sample_grads_hooks`. ``seed`` fixes the projections (a CPU generator per layer,
    so they are the same on every device; they are kept on the weight's device).
    """

    KINDS = (nn.Linear, nn.Conv2d)

    def __init__(self, model: nn.Module, dim: int = 32, seed: int = 0):
        if dim < 1:
            raise ValueError(f"dim: {dim} must be a positive integer")
        self.dim, self.seed = dim, seed
        self.matrices: dict[int, tuple[torch.Tensor | None, torch.Tensor | None]] = {}
        index = 0
        for module in model.modules():
            if type(module) in self.KINDS and module.weight.requires_grad and (
                    not isinstance(module, nn.Conv2d) or module.groups == 1):
                weight = module.weight.reshape(module.weight.shape[0], -1)
                generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
                self.matrices[id(module.weight)] = tuple(
                    None if size <= dim else
                    (torch.randn(dim, size, generator=generator, dtype=torch.float32)
                     / dim ** 0.5).to(weight.device)
                    for size in weight.shape)
                index += 1

    def projects(self, param: nn.Parameter) -> bool:
        return id(param) in self.matrices

    def width(self, param: nn.Parameter) -> int:
        """Entries of ``param``'s part of a projected row: k_o·k_i (a side no larger than
        ``dim`` kept whole) for a projected weight, its size for anything else."""
        if id(param) not in self.matrices:
            return param.numel()
        weight = param.reshape(param.shape[0], -1)
        return math.prod(size if matrix is None else matrix.shape[0]
                         for size, matrix in zip(weight.shape, self.matrices[id(param)]))

    def vector(self, param: nn.Parameter, value: torch.Tensor) -> torch.Tensor:
        """The projection of a weight-shaped tensor (a gradient, θ − θ*); others unchanged."""
        if id(param) not in self.matrices:
            return value
        p_out, p_in = self.matrices[id(param)]
        value = value.reshape(value.shape[0], -1).to(torch.float32)
        if p_out is not None:
            value = p_out @ value
        return value if p_in is None else value @ p_in.T

    def flat(self, model: nn.Module, vector: torch.Tensor) -> torch.Tensor:
        """A length-d vector over θ_A mapped into the projected coordinates of the rows."""
        params = adapter_parameters(model)[1]
        return torch.cat([self.vector(p, v).reshape(-1).to(torch.float32)
                          for p, v in zip(params, unflatten(vector, params))])

    def samples(self, layer: nn.Module, activation: torch.Tensor, backprop: torch.Tensor
                ) -> dict[nn.Parameter, torch.Tensor]:
        """Projected per-sample gradients of ``layer``'s weight, exact ones of its bias."""
        from opacus.utils.tensor_utils import unfold2d

        n = activation.shape[0]
        p_out, p_in = self.matrices[id(layer.weight)]
        if isinstance(layer, nn.Conv2d):  # as opacus.grad_sample.conv: [n, fan_in, positions]
            a = unfold2d(activation, kernel_size=layer.kernel_size, padding=layer.padding,
                         stride=layer.stride, dilation=layer.dilation).transpose(1, 2)
            d = backprop.reshape(n, backprop.shape[1], -1).transpose(1, 2)
        else:
            a, d = activation.reshape(n, -1, activation.shape[-1]), backprop.reshape(
                n, -1, backprop.shape[-1])
        a, d = a.to(torch.float32), d.to(torch.float32)
        if p_in is not None:
            a = a @ p_in.T
        bias = d.sum(1)
        if p_out is not None:
            d = d @ p_out.T
        out = {layer.weight: torch.einsum("nto,nti->noi", d, a)}
        if layer.bias is not None and layer.bias.requires_grad:
            out[layer.bias] = bias
        return out


def projected_per_sample_grads(model: nn.Module, task: Task, batch: Batch,
                               projector: GradientProjector, *, chunk_size: int | None = None,
                               check_rtol: float = 1e-3) -> torch.Tensor:
    """Rows of projected per-sample gradients, shape [batch, p], float32.

    p sums, over θ_A in ``named_parameters`` order, k_o·k_i for each projected weight and the
    size of every other parameter. Memory: the rows (batch·p) plus one backward pass of a chunk
    of ``chunk_size`` examples; nothing of size batch·d. Parameters the hooks cannot serve are
    exact, as in :func:`per_sample_grads_hooks` (which documents the fallback and
    ``check_rtol``; the sum check compares projections here).
    """
    return _hooked_rows(model, task, batch, chunk_size, check_rtol, projector=projector)


def _hooked_rows(model, task, batch, chunk_size, check_rtol, projector) -> torch.Tensor:
    names, params = adapter_parameters(model)
    n = batch_size(batch)
    samplers = _layer_samplers()
    layers = [module for module in model.modules()
              if type(module) in samplers
              and any(p.requires_grad for p in module.parameters(recurse=False))]
    hooked = {id(p) for layer in layers for p in layer.parameters(recurse=False) if p.requires_grad}
    poolings = _attention_poolings(model, layers)
    hooked |= {id(embedding) for embedding in poolings}
    step = chunk_size or n
    widths = [param.numel() if projector is None else projector.width(param) for param in params]
    offsets = [0, *itertools.accumulate(widths)]
    dtype = (functools.reduce(torch.promote_types, [p.dtype for p in params])
             if projector is None else torch.float32)
    # Each chunk's samples go straight into their rows and columns: the rows are the largest
    # thing a check holds (k·d), and one copy of them is all there ever is.
    rows = torch.empty(n, offsets[-1], dtype=dtype, device=params[0].device)
    served = set(range(len(params))) if hooked else set()
    # detach: some of Opacus's rules (GroupNorm, LayerNorm) build their samples from the layer's
    # own weight, which would keep a graph alive on the rows
    for start in range(0, n, step) if hooked else ():
        chunk = {key: value[start:start + step] for key, value in batch.items()}
        samples = _hooked_chunk(model, task, chunk, layers, params, hooked, check_rtol,
                                projector, poolings)
        served &= set(samples)  # a parameter must pass the sum check in every chunk
        for i in served:
            rows[start:start + step, offsets[i]:offsets[i + 1]] = samples[i].detach().reshape(
                len(samples[i]), -1)
    missing = [i for i in range(len(params)) if i not in served]
    if missing:
        subset = [names[i] for i in missing]
        rest = per_sample_grads(model, task, batch, chunk_size=chunk_size, names=subset).detach()
        for i, column in zip(missing, torch.split(rest, [params[i].numel() for i in missing], 1)):
            rows[:, offsets[i]:offsets[i + 1]] = column if projector is None else torch.stack(
                [projector.vector(params[i], r.view_as(params[i])).reshape(-1) for r in column])
    return rows


def _attention_poolings(model: nn.Module, layers: list[nn.Module]) -> dict:
    """{positional embedding: (q_proj, k_proj, v_proj)} of diffusers' ``AttentionPooling``
    (the caption pooling of ``addition_embed_type="text"``) where all three are hooked layers.

    Its trainable ``positional_embedding`` [1, W] is added to the class token, which is q_proj's
    input and position 0 of k_proj's and v_proj's, so example i's gradient is
    Σ_{p ∈ q,k,v} δ_{p,i,0} W_p from output gradients the hooks catch anyway; without this rule
    it would be the only DreamBooth parameter left to ``vmap`` (a whole extra pass).
    """
    try:
        from diffusers.models.embeddings import AttentionPooling
    except ImportError:
        return {}
    hooked = set(layers)
    return {module.positional_embedding: (module.q_proj, module.k_proj, module.v_proj)
            for module in model.modules()
            if isinstance(module, AttentionPooling) and module.positional_embedding.requires_grad
            and {module.q_proj, module.k_proj, module.v_proj} <= hooked}


def _hooked_chunk(model, task, batch, layers, params, hooked, check_rtol, projector, poolings
                  ) -> dict[int, torch.Tensor]:
    """Per-sample gradients [n, …] of the hooked parameters (by index into ``params``) that
    pass the sum check, for one chunk; projected where ``projector`` projects."""
    n = batch_size(batch)
    calls: dict[nn.Module, list | None] = {layer: [] for layer in layers}

    def unusable(layer):
        return lambda grad: calls.__setitem__(layer, None)

    def record(layer, caught, output):
        if calls[layer] is None:
            return
        if caught.shape[0] != n:
            # DoRA calls lora_A and lora_B on an identity matrix for its weight norm, which it
            # detaches: harmless unless a loss depends on the call
            output.register_hook(unusable(layer))
            return
        entry = [caught.detach(), None]
        calls[layer].append(entry)
        output.register_hook(lambda grad: entry.__setitem__(1, grad.detach()))

    def capture(layer, inputs, output):
        record(layer, inputs[0], output)

    def capture_dora(layer, inputs, kwargs, output):
        # the rule's direction (y + base)/m, base without bias as in peft's forward; peft passes
        # no base output when dropout is active, which scoring (eval mode) never is
        base, base_layer = kwargs.get("base_result"), kwargs["base_layer"]
        if base is None:
            calls[layer] = None
            return
        with torch.no_grad():
            if base_layer.bias is not None:
                base = base - base_layer.bias
            direction = (output + base) / layer.weight
        record(layer, direction, output)

    from peft.tuners.lora.dora import DoraLinearLayer

    handles = [layer.register_forward_hook(capture_dora, with_kwargs=True)
               if type(layer) is DoraLinearLayer else layer.register_forward_hook(capture)
               for layer in layers]
    targets = [p for p in params if id(p) in hooked]
    try:
        with scoring_mode(model):
            losses = task.batch_losses(model, batch)
            totals = torch.autograd.grad(losses.sum(), targets, materialize_grads=True)
    finally:
        for handle in handles:
            handle.remove()
    samplers = _layer_samplers()
    sums: dict[int, torch.Tensor] = {}
    computed = {torch.float32}  # dtypes the layers computed in (lower under autocast)
    # The rules run in the trainable parameters' dtype (float32) with autocast off: under autocast
    # their products would round every example's gradient to the half precision of the forward.
    with torch.autocast(totals[0].device.type, enabled=False):
        for layer, records in calls.items():
            dtype = next(p.dtype for p in layer.parameters(recurse=False) if p.requires_grad)
            for activation, backprop in records or []:
                if backprop is None:  # an output no loss depends on
                    continue
                computed.add(backprop.dtype)
                activation, backprop = activation.to(dtype), backprop.to(dtype)
                if projector is not None and projector.projects(getattr(layer, "weight", None)):
                    samples = projector.samples(layer, activation, backprop)
                else:
                    samples = samplers[type(layer)](layer, [activation], backprop)
                for param, sample in samples.items():
                    sums[id(param)] = sums[id(param)] + sample if id(param) in sums else sample
        for embedding, projections in poolings.items():
            records = [calls[layer] for layer in projections]
            if all(r is not None and len(r) == 1 and r[0][1] is not None for r in records):
                sample = sum(r[0][1][:, 0].to(embedding.dtype) @ layer.weight.to(embedding.dtype)
                             for r, layer in zip(records, projections)).view(n, *embedding.shape)
                if projector is not None:
                    sample = torch.stack([projector.vector(embedding, row) for row in sample])
                sums[id(embedding)] = sample
    # The batch gradient of a half-precision forward is rounded to that precision (relative error
    # up to its eps); a parameter used outside its layer's forward misses by far more than that.
    check_rtol = max([check_rtol] + [2 * torch.finfo(dtype).eps for dtype in computed])
    index = {id(p): i for i, p in enumerate(params)}
    unusable = {id(p) for layer, records in calls.items() if records is None
                for p in layer.parameters(recurse=False)}
    # A gradient that is round-off of its layer's scale (a key bias under softmax attention has
    # gradient zero) cannot be checked relative to itself: the floor is eps × the layer's largest.
    norms = {id(p): float(torch.linalg.vector_norm(t)) for p, t in zip(targets, totals)}
    floor = {}
    for layer in layers:
        owned = [id(p) for p in layer.parameters(recurse=False) if id(p) in norms]
        for key in owned:
            floor[key] = max(norms[other] for other in owned)
    eps = max(torch.finfo(dtype).eps for dtype in computed)
    kept = {}
    for param, total in zip(targets, totals):
        if id(param) in unusable:
            continue
        if projector is not None:
            total = projector.vector(param, total)
        sample = sums.get(id(param), torch.zeros((n, *total.shape), dtype=total.dtype,
                                                 device=total.device))
        error = torch.linalg.vector_norm(sample.sum(0) - total)
        tolerance = check_rtol * torch.linalg.vector_norm(total) + eps * floor.get(id(param), 0.0)
        if error <= tolerance + 1e-12:
            kept[index[id(param)]] = sample
    return kept


def per_sample_grads_loop(model: nn.Module, task: Task, batch: Batch,
                          params: Sequence[nn.Parameter] | None = None) -> torch.Tensor:
    """The same rows as :func:`per_sample_grads`, one backward pass per example (reference).

    ``params``: the parameters differentiated, in this order (None: all of θ_A).
    """
    params = adapter_parameters(model)[1] if params is None else list(params)
    rows = []
    with scoring_mode(model):
        for i in range(batch_size(batch)):
            example = {key: value[i:i + 1] for key, value in batch.items()}
            loss = task.batch_losses(model, example)[0]
            rows.append(_flatten(torch.autograd.grad(loss, params, materialize_grads=True)))
    return torch.stack(rows)


def loss_gradient(model: nn.Module, task: Task, batch: Batch) -> torch.Tensor:
    """∇_{θ_A} of the mean loss over ``batch``, as a vector (eval mode, like every score)."""
    params = adapter_parameters(model)[1]
    with scoring_mode(model):
        loss = task.batch_losses(model, batch).mean()
        return _flatten(torch.autograd.grad(loss, params, materialize_grads=True))


def gradient_sums(model: nn.Module, task: Task, batch: Batch, n: int, *,
                  chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ_{i<n} ∇ℓ_i, Σ_i ∇ℓ_i) over θ_A, shape [d] each, in θ_A's dtype.

    What Proposition 2's scores need when the curvature does not come from per-sample
    gradients: the first n examples and the rest run as separate batches (``chunk_size``
    examples at a time; None: each part at once), so every example is forwarded and
    back-propagated once, the cost of one training step on ``batch``.
    """
    params = adapter_parameters(model)[1]
    k = batch_size(batch)
    sums = []
    with scoring_mode(model):
        for start, stop in ((0, n), (n, k)):
            total = torch.zeros(sum(p.numel() for p in params), dtype=params[0].dtype,
                                device=params[0].device)
            step = chunk_size or max(stop - start, 1)
            for first in range(start, stop, step):
                chunk = {key: value[first:min(first + step, stop)] for key, value in batch.items()}
                losses = task.batch_losses(model, chunk)
                total += _flatten(torch.autograd.grad(losses.sum(), params,
                                                      materialize_grads=True)).detach()
            sums.append(total)
    return sums[0], sums[0] + sums[1]


# --- curvature operators --------------------------------------------------------------------

@runtime_checkable
class OutputTask(Task, Protocol):
    """A task that also exposes its network outputs, which Gauss-Newton products need.

    ``output_losses(batch_outputs(model, batch), batch)`` must equal ``batch_losses(model, batch)``.
    """

    def batch_outputs(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Network outputs f(x_i; θ), leading dimension the example (logits, predicted noise)."""
        ...

    def output_losses(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        """ℓ_i as a function of the outputs alone, shape [batch_size]."""
        ...


@runtime_checkable
class SampledFisherTask(Task, Protocol):
    """A task whose loss is a negative log-likelihood, so targets can be drawn from the model.

    kronfluence's ``Task.compute_train_loss(sample=True)`` in two halves, so that the loss stays
    a deterministic function of the batch (``vmap`` and chunked hook passes call it again):
    ``model_target_losses(model, draw_model_targets(model, batch, generator))`` must have
    per-example gradients r_i with E[r_i r_iᵀ] = the Gauss-Newton C_i of ``batch_losses``.
    """

    def draw_model_targets(self, model: nn.Module, batch: Batch,
                           generator: torch.Generator) -> Batch:
        """``batch`` plus targets drawn from the model's predictive distribution at θ (no grad)."""
        ...

    def model_target_losses(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """ℓ̃_i of the drawn targets, scaled as the docstring above requires, shape [batch_size]."""
        ...


class _ModelTargetLoss:
    """``batch_losses`` = a :class:`SampledFisherTask`'s loss of its drawn targets."""

    def __init__(self, task: SampledFisherTask):
        self.task = task

    def batch_losses(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return self.task.model_target_losses(model, batch)


def sampled_fisher_rows(model: nn.Module, task: Task, batch: Batch, *, draws: int = 1,
                        seed: int = 0, chunk_size: int | None = None) -> torch.Tensor:
    """Rows r [batch·draws, d] (example-major) of the ``sampled_fisher`` curvature.

    Each example is repeated ``draws`` times, targets are drawn once per copy from a CPU
    generator seeded with ``seed`` (the same rows on every device), and the rows are the
    per-sample gradients (:func:`per_sample_grads_hooks`) of the drawn targets' loss, so
    (1/draws) Σ_s r_{i,s} r_{i,s}ᵀ is an unbiased estimate of the Gauss-Newton C_i.
    Raises ConfigError for a task that cannot draw targets.
    """
    if not isinstance(task, SampledFisherTask):
        raise ConfigError(f"curvature: 'sampled_fisher' needs a task with draw_model_targets() "
                          f"and model_target_losses() (bat.core.curvature.SampledFisherTask); "
                          f"{type(task).__name__} has none: use 'fisher', 'gauss_newton' or "
                          f"'hessian'")
    repeated = {key: value.repeat_interleave(draws, 0) for key, value in batch.items()}
    with torch.no_grad(), scoring_mode(model):
        drawn = task.draw_model_targets(model, repeated, torch.Generator().manual_seed(seed))
    return per_sample_grads_hooks(model, _ModelTargetLoss(task), drawn, chunk_size=chunk_size)


class CurvatureOperator:
    """A symmetric d×d matrix M, available through products M v."""

    kind: str
    dim: int
    device: torch.device  # where its products are computed; vectors given to it are moved there

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def dense(self) -> torch.Tensor:
        """M built column by column from d products (for small d only), symmetrised."""
        eye = torch.eye(self.dim, dtype=torch.float64, device=self.device)
        columns = [self.matvec(e).to(torch.float64) for e in eye]
        matrix = torch.stack(columns, dim=1)
        return (matrix + matrix.T) / 2


class MatrixOperator(CurvatureOperator):
    """An explicit matrix (tests, benchmarks, closed-form convex models)."""

    def __init__(self, matrix: torch.Tensor, kind: str = "matrix"):
        self.matrix, self.kind, self.dim = matrix, kind, matrix.shape[0]
        self.device = matrix.device

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.matrix @ v.to(self.matrix)

    def dense(self) -> torch.Tensor:
        return self.matrix.to(torch.float64)


class RowFactor:
    """Gᵀ = Q R for rows G [n, d], computed once and shared by the operators of G, in float64
    without a float64 copy of G.

    From the Gram matrix G Gᵀ = V diag(s) Vᵀ: Q = Gᵀ V diag(s)^(-1/2) [d, rank], orthonormal
    columns spanning the rows, and R = diag(s)^(1/2) Vᵀ [rank, n] (with more rows than
    weights, n > d, from Gᵀ G = Q diag(s) Qᵀ and R = Qᵀ Gᵀ instead). Directions with
    s ≤ max(n, d)·eps₆₄·max(s) are round-off, not data, and are left out of Q (they fall in the
    complement the solvers treat with 1/λ). Q is never stored when n ≤ d: :meth:`project` (Qᵀv)
    and :meth:`expand` (Q y) multiply by G ``block`` columns at a time, each block converted to
    float64, so float32 rows need no d-sized float64 copy (G, Q and a temporary in float64 would
    be 3·n·d·8 bytes: 3 GB for 24 rows of the tiny UNet's 5.2M weights), and the blocked Gram
    runs faster than one of G converted whole. A float32 factor is no substitute: its rank
    cut-off max(n, d)·eps₃₂ is 0.6 at d = 5.2M and drops most of the rows' span.
    """

    def __init__(self, grads: torch.Tensor, block: int = 1 << 16):
        self.grads, self.block = grads, block
        self.wide = grads.shape[0] <= grads.shape[1]  # the n×n Gram; else Gᵀ G of a small d
        self._known: list[tuple[torch.Tensor, torch.Tensor | None]] = []  # (v, G v) of prefetch

    def prefetch(self, vectors: Sequence[torch.Tensor]) -> None:
        """Take G v for these vectors [d] in the pass over G that forms the Gram, so that
        :meth:`project` of each (the same tensor object) needs no pass of its own: Proposition
        2's check projects its two gradient sums, and each pass converts G to float64 block by
        block. Call before the factor is first used; afterwards it does nothing."""
        if self.wide and "_factors" not in self.__dict__:
            self._known = [(v, None) for v in vectors]

    @functools.cached_property
    def _factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(C [n, rank] with Q = Gᵀ C when wide, else Q [d, rank]; R [rank, n]), on first use:
        an operator solved by products alone (cg, lissa) never pays for the Gram."""
        n, d = self.grads.shape
        if self.wide:
            gram = torch.zeros(n, n, dtype=torch.float64, device=self.grads.device)
            known = torch.zeros(n, len(self._known), dtype=torch.float64, device=self.grads.device)
            vectors = [v for v, _ in self._known]
            for start, columns in zip(range(0, d, self.block), self._blocks()):
                gram += columns @ columns.T
                for j, v in enumerate(vectors):
                    known[:, j] += columns @ v[start:start + self.block].to(torch.float64)
            self._known = [(v, known[:, j]) for j, v in enumerate(vectors)]
        else:
            g = self.grads.to(torch.float64)
            gram = g.T @ g
        s, vectors = torch.linalg.eigh((gram + gram.T) / 2)
        keep = s > max(n, d) * torch.finfo(torch.float64).eps * max(float(s.max()), 0.0)
        s, vectors = s[keep], vectors[:, keep]
        if self.wide:
            return vectors / s.sqrt(), s.sqrt()[:, None] * vectors.T
        return vectors, vectors.T @ g.T

    @property
    def r(self) -> torch.Tensor:
        """R [rank, n], float64."""
        return self._factors[1]

    def _blocks(self) -> Iterator[torch.Tensor]:
        for start in range(0, self.grads.shape[1], self.block):
            yield self.grads[:, start:start + self.block].to(torch.float64)

    def project(self, v: torch.Tensor) -> torch.Tensor:
        """Qᵀ v [rank], float64, for v [d] of any float dtype."""
        basis = self._factors[0]
        if not self.wide:
            return basis.T @ v.to(torch.float64)
        gv = next((known for vector, known in self._known if vector is v), None)
        if gv is None:
            gv = sum(columns @ v[start:start + self.block].to(torch.float64)
                     for start, columns in zip(range(0, len(v), self.block), self._blocks()))
        return basis.T @ gv

    def expand(self, y: torch.Tensor) -> torch.Tensor:
        """Q y [d], float64, for y [rank]."""
        basis = self._factors[0]
        if not self.wide:
            return basis @ y
        c = basis @ y.to(torch.float64)
        return torch.cat([columns.T @ c for columns in self._blocks()])


class FisherOperator(CurvatureOperator):
    """M = Gᵀ diag(w) G = Σ_i w_i g_i g_iᵀ, from rows G [n, d] (per-sample gradients for
    ``fisher``, drawn-target gradients for ``sampled_fisher``).

    Operators built on one :class:`RowFactor` share its QR (Proposition 2's two curvatures are
    two weightings of the same rows); without one, zero-weight rows are dropped to keep n small.
    """

    def __init__(self, grads: torch.Tensor, weights: torch.Tensor, kind: str = "fisher",
                 factor: RowFactor | None = None):
        if factor is None:
            keep = weights != 0
            grads, weights = grads[keep.to(grads.device)], weights[keep]
            factor = RowFactor(grads)
        self.grads, self.weights, self.kind, self.factor = grads, weights.to(grads), kind, factor
        self.dim, self.device = grads.shape[1], grads.device

    def kernel(self) -> torch.Tensor:
        """R diag(w) Rᵀ [rank, rank] in float64: M in the basis Q of the rows' span."""
        r = self.factor.r
        return r @ (self.weights.to(torch.float64)[:, None] * r.T)

    def top_eigenvalue(self) -> float:
        """Largest |eigenvalue| of M, exactly, from the small :meth:`kernel`."""
        kernel = self.kernel()
        if kernel.numel() == 0:  # rows that are all zero: M = 0
            return 0.0
        return float(torch.linalg.eigvalsh((kernel + kernel.T) / 2).abs().max())

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.grads.T @ (self.weights * (self.grads @ v.to(self.grads)))

    def dense(self) -> torch.Tensor:
        g = self.grads.to(torch.float64)
        return g.T @ (self.weights.to(torch.float64)[:, None] * g)


class HessianOperator(CurvatureOperator):
    """M v = ∇(∇(Σ_i w_i ℓ_i) · v): double backward through a first-order graph kept alive."""

    kind = "hessian"

    def __init__(self, params: list[nn.Parameter], first_order: Sequence[torch.Tensor]):
        self.params, self.first_order = params, list(first_order)
        self.dim, self.device = sum(p.numel() for p in params), params[0].device

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        products = torch.autograd.grad(self.first_order, self.params,
                                       grad_outputs=unflatten(v, self.params),
                                       retain_graph=True, materialize_grads=True)
        return _flatten(products)


class GaussNewtonOperator(CurvatureOperator):
    """M v = Jᵀ (Σ_i w_i ∂²ℓ_i/∂f²) J v with three products through graphs kept alive.

    J v is taken as the derivative of the linear map u ↦ Jᵀu (a vector-Jacobian product built
    with ``create_graph``), so only reverse mode is needed, as for the Hessian.
    """

    kind = "gauss_newton"

    def __init__(self, params: list[nn.Parameter], outputs: torch.Tensor, dummy: torch.Tensor,
                 jacobian_t_dummy: Sequence[torch.Tensor], output_leaf: torch.Tensor,
                 output_grad: torch.Tensor):
        self.params, self.outputs, self.dummy = params, outputs, dummy
        self.jacobian_t_dummy, self.output_leaf, self.output_grad = (
            list(jacobian_t_dummy), output_leaf, output_grad)
        self.dim, self.device = sum(p.numel() for p in params), params[0].device

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        jv = torch.autograd.grad(self.jacobian_t_dummy, self.dummy,
                                 grad_outputs=unflatten(v, self.params), retain_graph=True)[0]
        hjv = torch.autograd.grad(self.output_grad, self.output_leaf, grad_outputs=jv,
                                  retain_graph=True)[0]
        products = torch.autograd.grad(self.outputs, self.params, grad_outputs=hjv,
                                       retain_graph=True, materialize_grads=True)
        return _flatten(products)


def curvature_operators(kind: str, model: nn.Module, task: Task, batch: Batch,
                        weight_sets: Sequence[torch.Tensor], *, rows: torch.Tensor | None = None,
                        chunk_size: int | None = None, draws: int = 1, seed: int = 0
                        ) -> list[CurvatureOperator]:
    """One operator Σ_i w_i C_i per weight vector in ``weight_sets``, sharing one forward pass.

    A row curvature's ``rows`` of ``batch`` are used when given (per-sample gradients
    [batch, d] for ``fisher``, :func:`sampled_fisher_rows` [batch·draws, d] for
    ``sampled_fisher``), else computed: ``sampled_fisher`` draws ``draws`` targets per example
    with ``seed``. Each ``sampled_fisher`` row is weighted w_i / draws.
    """
    if kind not in CURVATURES:
        raise ConfigError(f"curvature: {kind!r} is not allowed; choose one of {list(CURVATURES)}")
    if kind in ROW_CURVATURES:
        if kind == "sampled_fisher":
            if rows is None:
                rows = sampled_fisher_rows(model, task, batch, draws=draws, seed=seed,
                                           chunk_size=chunk_size)
            weight_sets = [w.repeat_interleave(draws) / draws for w in weight_sets]
        elif rows is None:
            rows = per_sample_grads_hooks(model, task, batch, chunk_size=chunk_size)
        factor = RowFactor(rows) if len(weight_sets) > 1 else None
        return [FisherOperator(rows, w, kind, factor) for w in weight_sets]
    params = adapter_parameters(model)[1]
    with scoring_mode(model), math_attention():
        if kind == "hessian":
            losses = task.batch_losses(model, batch)
            return [HessianOperator(params, torch.autograd.grad(
                (w.to(losses) * losses).sum(), params, create_graph=True, retain_graph=True,
                materialize_grads=True)) for w in weight_sets]
        if not isinstance(task, OutputTask):
            raise ConfigError("curvature: 'gauss_newton' needs a task with batch_outputs() and "
                              "output_losses() (bat.core.curvature.OutputTask); use 'fisher' or "
                              "'hessian' for this task")
        outputs = task.batch_outputs(model, batch)
        dummy = torch.zeros_like(outputs, requires_grad=True)
        jacobian_t_dummy = torch.autograd.grad(outputs, params, grad_outputs=dummy,
                                               create_graph=True, materialize_grads=True)
        leaf = outputs.detach().requires_grad_(True)
        losses = task.output_losses(leaf, batch)
        operators = []
        for w in weight_sets:
            output_grad = torch.autograd.grad((w.to(losses) * losses).sum(), leaf,
                                              create_graph=True, retain_graph=True)[0]
            operators.append(GaussNewtonOperator(params, outputs, dummy, jacobian_t_dummy,
                                                 leaf, output_grad))
        return operators


# --- per-example curvature in a subspace ----------------------------------------------------

def projected_curvatures(kind: str, model: nn.Module, task: Task, batch: Batch,
                         basis: torch.Tensor, *, grads: torch.Tensor | None = None,
                         chunk_size: int | None = None) -> torch.Tensor:
    """Qᵀ C_i Q for every example i, shape [batch, r, r], Q = ``basis`` [d, r], orthonormal columns.

    C_i is example i's ``hessian``, ``gauss_newton`` or ``fisher`` matrix (module docstring).
    Computed as the curvature of α ↦ ℓ_i(θ + Qα) at α = 0 with ``vmap`` over the examples, so
    the cost is r forward-over-reverse passes per example and d×d is never formed; with
    Q = I this is C_i itself. ``fisher`` uses the rows of ``grads`` [batch, d] when given;
    ``sampled_fisher`` one drawn target per example (seed 0). Raises ConfigError for an unknown
    ``kind``, ``gauss_newton`` on a task without outputs or ``sampled_fisher`` on one that
    cannot draw targets.
    """
    if kind not in CURVATURES:
        raise ConfigError(f"curvature: {kind!r} is not allowed; choose one of {list(CURVATURES)}")
    if kind in ROW_CURVATURES:
        if kind == "sampled_fisher":
            grads = sampled_fisher_rows(model, task, batch, chunk_size=chunk_size)
        elif grads is None:
            grads = per_sample_grads_hooks(model, task, batch, chunk_size=chunk_size)
        projected = grads.to(basis.dtype) @ basis
        return projected[:, :, None] * projected[:, None, :]
    if kind == "gauss_newton" and not isinstance(task, OutputTask):
        raise ConfigError("curvature: 'gauss_newton' needs a task with batch_outputs() and "
                          "output_losses() (bat.core.curvature.OutputTask); use 'fisher' or "
                          "'hessian' for this task")
    names, params = adapter_parameters(model)
    keys = [f"model.{name}" for name in names]
    theta = flat_parameters(model).to(basis.dtype)
    wrapper = _TaskLoss(model, task)

    def moved(alpha: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(zip(keys, unflatten(theta + basis @ alpha, params)))

    def hessian_of_one(example: Batch) -> torch.Tensor:
        single = {key: value.unsqueeze(0) for key, value in example.items()}
        return hessian(lambda a: functional_call(wrapper, moved(a), (single,))[0])(
            torch.zeros(basis.shape[1], dtype=basis.dtype, device=basis.device))

    outputs_wrapper = _TaskOutputs(model, task)

    def gauss_newton_of_one(example: Batch) -> torch.Tensor:
        single = {key: value.unsqueeze(0) for key, value in example.items()}
        zero = torch.zeros(basis.shape[1], dtype=basis.dtype, device=basis.device)
        outputs = functional_call(outputs_wrapper, moved(zero), (single,))
        jacobian = jacrev(lambda a: functional_call(outputs_wrapper, moved(a), (single,)))(zero)
        jacobian = jacobian.reshape(-1, basis.shape[1]).to(basis.dtype)
        curvature = hessian(lambda f: task.output_losses(f, single)[0])(outputs.detach())
        curvature = curvature.reshape(jacobian.shape[0], jacobian.shape[0]).to(basis.dtype)
        return jacobian.T @ curvature @ jacobian

    with scoring_mode(model), math_attention():
        if kind == "hessian":
            return vmap(hessian_of_one, chunk_size=chunk_size)(batch)
        return vmap(gauss_newton_of_one, chunk_size=chunk_size)(batch)
