"""The JAX backend of the monitor: `jax.value_and_grad` of a stateless model call, in `jax.jit`.

The gradient of the loss w.r.t. a tensor inside the call: each tapped tensor s goes on as s + eps, eps a zero array
that is an argument of the differentiated function, so dC/d eps = dC/ds (through this layer's path only, as the
TensorFlow backend's identity op) and the forward values are unchanged (s + 0 = s). The recurrent layers' hidden
states are tapped the same way (`keras_initkit.recurrent.TimeTaps`, its eps given here). The shapes of the eps are
found by one abstract evaluation (`jax.eval_shape`) first. Every model variable is an argument of the compiled
function (mapped in a `keras.StatelessScope`), so a record reads the current weights, never the traced ones, and no
state update escapes; the histogram ranges the statistics fix at a first record (`RecordSpec.hist_state`) are
threaded through the function as arguments and results.

`TFLike` is the statistics' shim: the subset of TensorFlow's names that `keras_initkit.stats`, `record` and
`recurrent` use, over `jax.numpy`. Under JAX every shape is static, so the statistics take their static-shape
branches, and their float64 accumulations are float32 unless `jax_enable_x64` is on.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Callable

import keras
import numpy as np

from keras_initkit.backends import Holder, check_called, probe_loss, unwrap
from keras_initkit.hooks import LayerHooks
from keras_initkit.record import Layout
from keras_initkit.recurrent import TimeTaps

__all__ = ["TFLike", "ops", "probe_function", "tensor_values"]


class _Variable(Holder):
    """A `Holder` of a JAX array (the histogram ranges); threaded through `jax.jit` by `probe_function`."""

    @staticmethod
    def asarray(value, dtype=None):
        import jax.numpy as jnp

        return jnp.asarray(value, dtype=dtype)


def _tflike():
    import jax
    import jax.numpy as jnp

    def concat(values, axis=0):
        values = [unwrap(v) for v in values]
        if not any(isinstance(v, jax.Array) or isinstance(v, jax.core.Tracer) for v in values):
            return np.concatenate([np.asarray(v) for v in values], axis)  # a static shape, as tf.shape's
        return jnp.concatenate([jnp.asarray(v) for v in values], axis)

    def gather(x, indices, axis=0):
        return jnp.take(unwrap(x), jnp.asarray(indices), axis=axis)

    def shape(x):
        return np.asarray(x.shape, dtype=np.int64)

    def zeros(shape, dtype=jnp.float32):
        return jnp.zeros(tuple(int(d) for d in np.asarray(shape).reshape(-1)), dtype)

    def ones(shape, dtype=jnp.float32):
        return jnp.ones(tuple(int(d) for d in np.asarray(shape).reshape(-1)), dtype)

    def argmax(x, axis=None, output_type=None):
        out = jnp.argmax(unwrap(x), axis=axis)
        return out if output_type is None else out.astype(output_type)

    def norm(x, axis=None):
        return jnp.linalg.norm(unwrap(x), axis=axis)

    def reduce_euclidean_norm(x, axis=None):
        return jnp.sqrt(jnp.sum(jnp.square(unwrap(x)), axis=axis))

    def unsorted_segment_sum(data, segment_ids, num_segments):
        return jax.ops.segment_sum(unwrap(data), unwrap(segment_ids), num_segments=num_segments)

    def cast(x, dtype):
        return jnp.asarray(unwrap(x)).astype(dtype)

    wrap = lambda f: lambda *a, **k: f(*(unwrap(x) for x in a), **k)  # noqa: E731
    x64 = bool(jax.config.jax_enable_x64)
    return types.SimpleNamespace(
        float16=jnp.float16,
        bfloat16=jnp.bfloat16,
        float32=jnp.float32,
        float64=jnp.float64 if x64 else jnp.float32,
        int32=jnp.int32,
        int64=jnp.int64 if x64 else jnp.int32,
        bool=jnp.bool_,
        Variable=_Variable,
        abs=wrap(jnp.abs),
        argmax=argmax,
        cast=cast,
        concat=concat,
        cond=lambda pred, true_fn, false_fn: jax.lax.cond(unwrap(pred), true_fn, false_fn),
        constant=lambda value, dtype=None: jnp.asarray(unwrap(value), dtype=dtype),
        control_dependencies=lambda _deps: contextlib.nullcontext(),
        convert_to_tensor=lambda value, dtype=None: jnp.asarray(unwrap(value), dtype=dtype),
        equal=wrap(jnp.equal),
        floor=wrap(jnp.floor),
        gather=gather,
        identity=wrap(lambda x: x),
        logical_not=wrap(jnp.logical_not),
        maximum=wrap(jnp.maximum),
        minimum=wrap(jnp.minimum),
        norm=norm,
        ones=ones,
        ones_like=wrap(jnp.ones_like),
        range=jnp.arange,
        reduce_all=wrap(jnp.all),
        reduce_max=wrap(jnp.max),
        reduce_mean=wrap(jnp.mean),
        reduce_min=wrap(jnp.min),
        reduce_sum=wrap(jnp.sum),
        reshape=lambda x, shape: jnp.reshape(unwrap(x), tuple(int(d) for d in np.asarray(shape).reshape(-1))),
        reverse=lambda x, axis: jnp.flip(unwrap(x), axis=tuple(axis)),
        shape=shape,
        size=lambda x: int(np.prod(x.shape)),
        sort=wrap(jnp.sort),
        sqrt=wrap(jnp.sqrt),
        square=wrap(jnp.square),
        stack=lambda values, axis=0: jnp.stack([unwrap(v) for v in values], axis),
        where=wrap(jnp.where),
        zeros=zeros,
        zeros_like=wrap(jnp.zeros_like),
        math=types.SimpleNamespace(
            is_finite=wrap(jnp.isfinite),
            reduce_euclidean_norm=reduce_euclidean_norm,
            unsorted_segment_sum=unsorted_segment_sum,
        ),
    )


TFLike = None  # made at the first `ops()` (importing jax only then)


def ops():
    global TFLike
    if TFLike is None:
        TFLike = _tflike()
    return TFLike


# (what is computed, signature) -> (compiled function, its layout entries): shared by every monitor of the process
# (the built-in statistics are the same functions in each); bounded as Keras' own caches are not, by _VALUES_MAX.
_VALUES: dict = {}
_VALUES_MAX = 4096


def _spec_key(spec) -> tuple:
    """What `spec.compute` computes, as a hashable key."""
    return (
        tuple(spec.stats.items()),  # the functions themselves (hashed by identity, kept alive by the key)
        spec.histogram_kinds,
        spec.bins,
        tuple(sorted(spec.bin_range.items())),
        spec.quantile_sample,
    )


def tensor_values(spec, layout, t, kind, x, hist, unit, xla):
    """`spec.compute(...)` (the statistics of one tensor, appending its entries to `layout`) by a function compiled
    once per signature: shape, dtype, kind, unit, the layer's activation and unit axis, the histogram's presence.

    XLA's compilation costs ~0.1-0.4 s per tensor's statistics on a CPU, so one function per record would cost
    seconds per model, while a deep net's layers share a few signatures. Called eagerly (outside `jax.jit`); the
    histogram range state (`hist`, `TFLike.Variable`s) goes in as arguments and comes back as results.
    """
    import jax

    state = (hist or {}).get((t.index, kind), ())
    key = (_spec_key(spec), tuple(x.shape), str(x.dtype), kind, unit, t.activation, t.unit_axis, len(state), xla)
    cache = _VALUES
    if key not in cache:
        entries: list = []

        def compute(x, state_values):
            holders = [_Variable(v) for v in state_values]
            local = Layout(layout.targets)
            vec = spec.compute(local, t, kind, x, {(t.index, kind): tuple(holders)} if holders else None, unit, xla)
            entries[:] = [(role, kind_, stat, unit_) for role, _i, kind_, stat, unit_ in local.entries]
            return vec, [h.value for h in holders]

        if len(cache) >= _VALUES_MAX:
            cache.clear()
        lowered = jax.jit(compute).lower(x, [v.value for v in state])
        cache[key] = (lowered.compile(compiler_options=_compiler_options(int(np.prod(x.shape)))), entries)
    fn, entries = cache[key]
    vec, new_state = fn(x, [v.value for v in state])
    for holder, value in zip(state, new_state, strict=True):
        holder.value = value
    layout.entries.extend((role, t.index, kind_, stat, unit_) for role, kind_, stat, unit_ in entries)
    return vec


# Below this many elements a tensor's statistics are compiled at LLVM's cheapest level on a CPU (~3x faster to
# compile; its run takes microseconds either way); larger ones get XLA's optimized code (their run is what counts).
_QUICK_COMPILE_BELOW = 1 << 16


def _compiler_options(size: int) -> dict:
    """XLA's options for the statistics of a tensor of `size` elements (see `_QUICK_COMPILE_BELOW`)."""
    import jax

    quick = jax.default_backend() == "cpu" and size < _QUICK_COMPILE_BELOW
    return {"xla_backend_optimization_level": 0} if quick else {}


def _unique(variables):
    seen, out = set(), []
    for v in variables:
        if id(v) not in seen:
            seen.add(id(v))
            out.append(v)
    return out


def probe_function(
    model,
    targets,
    time_targets,
    data,
    *,
    grads: bool,
    training: bool,
    xla: bool,
    reduce: Callable,
    state=(),
    loss: Callable | None = None,
):
    """The probe record of `model` on `data` = (x, y, sample_weight), compiled now: a callable () ->
    `reduce(tensors, taps, time_grads)`, as the TensorFlow backend's (see there). The forward and backward pass is
    compiled (`jax.jit`); `reduce` runs eagerly, so the `TFLike.Variable`s it assigns (`state`) need nothing here.
    `xla` is moot.
    """
    import jax
    import jax.numpy as jnp

    kernels = {t.index: t.kernel for t in targets if t.kernel is not None}
    kernel_vars = _unique(kernels.values())
    at = {id(v): j for j, v in enumerate(kernel_vars)}
    others = [v for v in _unique(model.variables) if id(v) not in at]
    to_j = lambda v: None if v is None else keras.tree.map_structure(jnp.asarray, v)  # noqa: E731
    data = tuple(to_j(v) for v in data)
    shapes: dict = {}  # (index, kind) and a recurrent layer's (index, "time") -> the eps' ShapeDtypeStruct
    box: dict = {}  # the last trace's hooks and taps

    def forward(kvals, ovals, eps, data):
        x, y, sw = data
        rec = {}

        def keep(kind):
            def f(t, s):
                key = (t.index, kind)
                if eps is None:
                    shapes[key] = jax.ShapeDtypeStruct(s.shape, s.dtype)
                else:
                    s = s + eps[key]
                rec[key] = s
                return s

            return f

        def time_eps(index, zeros):
            if eps is None:
                shapes[(index, "time")] = jax.ShapeDtypeStruct(zeros.shape, zeros.dtype)
                return zeros
            return eps[(index, "time")]

        mapping = list(zip(kernel_vars, kvals, strict=True)) + list(zip(others, ovals, strict=True))
        with keras.StatelessScope(state_mapping=mapping):  # no BatchNormalization, seed or metric update escapes
            with (
                LayerHooks(targets, keep("preact"), keep("activation")) as hooks,
                TimeTaps(time_targets, source=time_eps) as taps,
            ):
                y_pred = model(x, training=training)
            cost = probe_loss(model, loss, x, y, y_pred, sw) if grads else jnp.zeros(())
        box["hooks"], box["taps"] = hooks, taps
        hidden = {i: (tap.hidden, tap.weights) for i, tap in taps.taps.items()}
        return jnp.asarray(cost, jnp.float32), (rec, hidden)

    def tensors_of(kvals, ovals, data):
        """Every tapped tensor and gradient, and the recurrent layers' (h_t, step weights) and dC/dh_t."""
        eps = {k: jnp.zeros(s.shape, s.dtype) for k, s in shapes.items()}
        if grads:
            (_, (rec, hidden)), (g_kernels, g_eps) = jax.value_and_grad(
                lambda kv, e: forward(kv, ovals, e, data), argnums=(0, 1), has_aux=True
            )(kvals, eps)
        else:
            _, (rec, hidden) = forward(kvals, ovals, eps, data)
        tensors = {f"{i}/{kind}": v for (i, kind), v in rec.items()}
        time_grads = None
        if grads:
            tensors.update({f"{i}/grad_{kind}": g for (i, kind), g in g_eps.items() if kind != "time"})
            time_grads = [g_eps[(t.index, "time")] for t in time_targets]
            tensors.update({f"{i}/grad_kernel": g_kernels[at[id(k)]] for i, k in kernels.items()})
        tensors.update({f"{i}/kernel": kvals[at[id(k)]] for i, k in kernels.items()})
        return tensors, {str(i): hw for i, hw in hidden.items()}, time_grads

    def args():
        return [v.value for v in kernel_vars], [v.value for v in others], data

    # The eps shapes first (one abstract pass), then the forward and backward pass traced and compiled once.
    jax.eval_shape(lambda kv, ov, d: forward(kv, ov, None, d)[0], *args())
    compiled = jax.jit(tensors_of).lower(*args()).compile()
    hooks, taps = box["hooks"], box["taps"]
    check_called(targets, hooks)
    taps.sources()  # names a recurrent layer the call never ran

    def fn():
        flat, hidden, time_grads = compiled(*args())
        tensors = {(int(key.split("/")[0]), key.split("/")[1]): v for key, v in flat.items()}
        for i, (h, w) in hidden.items():
            taps.taps[int(i)].hidden, taps.taps[int(i)].weights = h, w
        # The statistics run op by op on the device (each a compiled kernel): compiling them into the function
        # above would cost seconds of XLA compilation per model, for a record of milliseconds.
        return reduce(tensors, taps, time_grads)

    return fn
