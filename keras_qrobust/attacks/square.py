"""Square Attack (Andriushchenko et al. 2020, "Square Attack: a query-efficient black-box
adversarial attack via random search", ECCV), L∞ and L2 — gradient-free, so it also attacks
a deployed ``.tflite`` / ``.onnx`` / ``.fbz`` file directly (:func:`keras_qrobust.export.load`).

Random search (Algorithm 1): from an initial perturbation, propose a change confined to a
random square window covering a fraction ``p`` of the image, and keep it when the loss
improves (or the input becomes misclassified). ``p`` starts at ``p_init`` and is halved as
the iteration passes 10, 50, 200, 500, 1,000, 2,000, 4,000, 6,000 and 8,000 (rescaled from
10,000 iterations to the budget with ``rescale_schedule``, as ART does; AutoAttack uses the
iteration counts as they are, ``p_init`` 0.8 and 5,000 iterations).

* L∞ (Algorithm 2): start at vertical stripes ``x + ε·s`` (one sign per column and
  channel); a proposal sets the window's perturbation to ``±ε`` per channel.
* L2 (Algorithm 3): start at a grid of centre-weighted "meta-pixel" patterns ``η`` (sums
  of concentric rectangles weighted ``1/(k + 1)²``, positive in one half and negative in the
  other) with random signs, scaled to ``‖δ‖₂ = ε``; a proposal moves the mass of a second
  window into the first, adds a new ``±η`` there and rescales so the total stays ``ε``:
  ``δ_w ← (η·s + δ_w/‖δ_w‖) / ‖·‖ · √(max(ε² − ‖δ‖², 0)/c + ‖δ_{w ∪ w₂}‖²)`` per channel,
  then ``x' = P_box(x + ε·δ/‖δ‖₂)``.

The loss is the margin ``z_y − max_{j≠y} z_j`` (``loss="margin"``) or cross-entropy
(``"ce"``), minimized; an input stops as soon as it is misclassified (reaches the target
when ``targeted``). Each attack runs as a ``tf.function`` compiled once per model and
configuration, on whole batches (each image with its own random windows), numpy in and out.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .._keras import tf
from ._common import check_array, check_count, check_eps, check_inputs, check_norm, clip_key, compiled, generator
from ._queries import Ticks, as_query_model, batch_seed, clean_objective, into_ball, objective, rademacher

__all__ = ["square", "square_fraction", "meta_pattern", "SQUARE_LOSSES"]

SQUARE_LOSSES = ("margin", "ce")
# Iterations per call of the compiled loop: the progress bar moves between calls, and a batch
# whose examples have all succeeded stops there.
_ITERATIONS_PER_CALL = 50
_P_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_fraction(i, budget, p_init, rescale: bool = True) -> tf.Tensor:
    """The fraction ``p`` of pixels a square covers at iteration ``i`` (paper §3, "choice of
    p"; ``p_selection`` of the authors' code): ``p_init / 2^k``, ``k`` the number of bounds of
    (10, 50, 200, …, 8000) that the iteration exceeds — ``⌊10,000·i/budget⌋`` with
    ``rescale``, ``i`` itself without."""
    i = tf.cast(i, tf.int64)
    scaled = i * 10000 // tf.cast(budget, tf.int64) if rescale else i
    halvings = tf.reduce_sum(tf.cast(scaled > tf.constant(_P_HALVINGS, tf.int64), tf.float32))
    return tf.cast(p_init, tf.float32) / tf.pow(2.0, halvings)


def _rectangles(rows: int, cols: int) -> np.ndarray:
    """Concentric rectangles around the centre ``(⌊rows/2⌋, ⌊cols/2⌋)``, the k-th weighted
    ``1/(k + 1)²`` (the authors' ``eta_rectangles``), unit L2 norm."""
    i, j = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    ring = np.maximum(np.abs(i - rows // 2), np.abs(j - cols // 2))
    rings = max(rows // 2 + 1, cols // 2 + 1)
    weights = np.cumsum(1.0 / np.arange(rings, 0, -1) ** 2)[::-1]  # Σ_{k ≥ ring} 1/(k + 1)²
    pattern = weights[ring]
    return pattern / np.sqrt((pattern ** 2).sum())


def meta_pattern(size: int) -> np.ndarray:
    """The L2 attack's ``size × size`` update ``η`` (the authors' ``eta``): rectangles in the
    top half, their negation in the bottom half, unit L2 norm."""
    pattern = np.zeros((size, size))
    pattern[:size // 2] = _rectangles(size // 2, size) if size // 2 else 0.0
    pattern[size // 2:] = -_rectangles(size - size // 2, size)
    return pattern / np.sqrt((pattern ** 2).sum())


def _pattern_table(largest: int) -> np.ndarray:
    """``table[s]``: :func:`meta_pattern` ``(s)`` padded to ``largest × largest`` (0 for s < 1)."""
    table = np.zeros((largest + 1, largest, largest), np.float32)
    for s in range(1, largest + 1):
        table[s, :s, :s] = meta_pattern(s)
    return table


def _window(count, height, width, size, seed) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """A random ``size × size`` window per image: ``(mask (n, H, W, 1), top, left)``."""
    s_top, s_left = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    top = tf.random.stateless_uniform([count], s_top, 0, height - size + 1, tf.int32)
    left = tf.random.stateless_uniform([count], s_left, 0, width - size + 1, tf.int32)
    rows = tf.range(height)[None, :]
    cols = tf.range(width)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < top[:, None] + size)
    in_cols = (cols >= left[:, None]) & (cols < left[:, None] + size)
    return in_rows[:, :, None, None] & in_cols[:, None, :, None], top, left


def _nonzero_bits(count: tf.Tensor, channels: int, seed: tf.Tensor) -> tf.Tensor:
    """``(count, channels)`` 0/1 rows drawn uniformly among the rows that are not all zero
    (for more than 62 channels, only the first 62 can be set)."""
    width = min(channels, 62)
    draw = tf.random.stateless_uniform([count], seed, 1, 2 ** width, tf.int64)
    bits = tf.bitwise.bitwise_and(tf.bitwise.right_shift(draw[:, None], tf.range(width, dtype=tf.int64)), 1)
    bits = tf.cast(bits, tf.float32)
    return tf.pad(bits, [[0, 0], [0, channels - width]])


def _proposal_linf(x, best, size, eps, clip, seed) -> tf.Tensor:
    """One random square update per image (Algorithm 2): a ``size × size`` window at a
    uniform position gets ``δ = ±2ε`` per channel, then ``x_new = Π_box(Π_ε(x_best + δ))`` —
    i.e. the window's perturbation becomes ``±ε``. As the authors' code, the signs are
    redrawn when the proposal would leave the window unchanged (an XOR with a uniform
    non-zero bit mask: at most one sign vector, the window's current one, does)."""
    count, height, width = tf.shape(x)[0], tf.shape(x)[1], tf.shape(x)[2]
    channels = x.shape[-1]
    s_top, s_left, s_sign, s_flip = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
    top = tf.random.stateless_uniform([count], s_top, 0, height - size + 1, tf.int32)
    left = tf.random.stateless_uniform([count], s_left, 0, width - size + 1, tf.int32)
    rows = tf.range(height)[None, :]
    cols = tf.range(width)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < top[:, None] + size)
    in_cols = (cols >= left[:, None]) & (cols < left[:, None] + size)
    window = in_rows[:, :, None, None] & in_cols[:, None, :, None]
    sign = rademacher([count, channels], s_sign)

    def propose(sign):
        vertex = x + eps * sign[:, None, None, :]
        if clip is not None:
            vertex = tf.clip_by_value(vertex, clip[0], clip[1])
        return tf.where(window, vertex, best)

    proposal = propose(sign)
    unchanged = tf.logical_not(tf.reduce_any(tf.abs(proposal - best) > 1e-7, axis=[1, 2, 3]))
    flipped = sign * (1.0 - 2.0 * _nonzero_bits(count, channels, s_flip))
    return propose(tf.where(unchanged[:, None], flipped, sign))


def _placed(table, size, top, left, height, width, transpose) -> tf.Tensor:
    """``(n, H, W, 1)``: pattern ``table[size]`` (transposed where ``transpose``) at each
    image's window, zero elsewhere. Two gathers (rows, then columns) of the pattern padded
    with a zero row and column, where every position outside the window reads."""
    pattern = tf.pad(tf.gather(table, size), [[0, 1], [0, 1]])  # (L + 1, L + 1), zero past the pattern
    outside = tf.shape(pattern)[0] - 1
    patterns = tf.gather(tf.stack([pattern, tf.transpose(pattern)]), tf.cast(transpose, tf.int32))
    rows = tf.range(height)[None, :] - top[:, None]  # (n, H): position inside the window
    cols = tf.range(width)[None, :] - left[:, None]  # (n, W)
    rows = tf.where((rows >= 0) & (rows < size), rows, outside)
    cols = tf.where((cols >= 0) & (cols < size), cols, outside)
    values = tf.gather(tf.gather(patterns, rows, batch_dims=1), cols, axis=2, batch_dims=1)  # (n, H, W)
    return values[..., None]


def _l2(t: tf.Tensor, axes) -> tf.Tensor:
    return tf.sqrt(tf.reduce_sum(tf.square(t), axes, keepdims=True))


def _proposal_l2(x, best, size, eps, clip, seed, table) -> tf.Tensor:
    """One L2 update per image (Algorithm 3, the authors' ``attack_single_run`` L2 branch)."""
    count, height, width = tf.shape(x)[0], tf.shape(x)[1], tf.shape(x)[2]
    channels = x.shape[-1]
    s_first, s_second, s_sign, s_flip = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
    first, top, left = _window(count, height, width, size, s_first)
    second, _, _ = _window(count, height, width, size, s_second)
    delta = best - x
    inside = tf.cast(first, tf.float32)
    norm_first = _l2(delta * inside, [1, 2])  # (n, 1, 1, C)
    norm_image = _l2(delta, [1, 2, 3])  # (n, 1, 1, 1)
    norm_windows = _l2(delta * tf.cast(first | second, tf.float32), [1, 2])
    transpose = tf.random.stateless_uniform([count], s_flip) > 0.5
    pattern = _placed(table, size, top, left, height, width, transpose)  # (n, H, W, 1)
    sign = rademacher([count, 1, 1, channels], s_sign)
    new = pattern * sign + delta * inside / (norm_first + 1e-12)
    scale = tf.sqrt(tf.maximum(eps ** 2 - tf.square(norm_image), 0.0) / channels + tf.square(norm_windows))
    new = new / (_l2(new * inside, [1, 2]) + 1e-12) * scale
    delta = tf.where(second, 0.0, delta)
    delta = tf.where(first, new, delta)
    proposal = x + eps * delta / (_l2(delta, [1, 2, 3]) + 1e-12)
    return proposal if clip is None else tf.clip_by_value(proposal, clip[0], clip[1])


def _loss(logits, y, targeted: bool, loss: str) -> tf.Tensor:
    """What the search maximizes: the objective (``> 0`` ⇔ success) or, with ``"ce"``,
    the cross-entropy of ``y`` (untargeted) / minus that of the target."""
    if loss == "margin":
        return objective(logits, y, targeted)
    value = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
    return -value if targeted else value


def _to_model(images: tf.Tensor, plain: bool) -> tf.Tensor:
    """``(n, H, W, C)`` images as the model takes them: ``(n, H, W)`` when ``plain``."""
    return images[..., 0] if plain else images


def _compiled_square(attack_model, norm: str, targeted: bool, loss: str, clip: Optional[tuple], plain: bool,
                     rescale: bool):
    """``run(x, y, best, value, success, first, iterations, budget, eps, p_init, seed, table)
    -> (best, value, success)``: iterations ``first … first + iterations − 1`` on the images
    ``(n, H, W, C)`` whose ``success`` (objective) is not yet > 0."""

    def factory(get_model):
        @tf.function(reduce_retracing=True)
        def run(x, y, best, value, success, first, iterations, budget, eps, p_init, seed, table):
            model = get_model()
            height, width = tf.shape(x)[1], tf.shape(x)[2]
            for i in tf.range(first, first + iterations):
                active = tf.where(success <= 0)[:, 0]
                if tf.size(active) == 0:
                    break
                rows = active[:, None]
                p = square_fraction(i, budget, p_init, rescale)
                pixels = p * tf.cast(height * width, tf.float32)
                best_a, value_a = tf.gather(best, active), tf.gather(value, active)
                step_seed = tf.random.experimental.stateless_fold_in(seed, i)
                if norm == "inf":
                    # side s = round(√(p·H·W)), at least 1, at most min(H, W) − 1 (authors' code)
                    size = tf.cast(tf.round(tf.sqrt(pixels)), tf.int32)
                    size = tf.maximum(1, tf.minimum(size, tf.minimum(height, width) - 1))
                    proposal = _proposal_linf(tf.gather(x, active), best_a, size, eps, clip, step_seed)
                else:
                    # odd side ≥ 3, at most min(H, W) (authors' code)
                    size = tf.maximum(3, tf.cast(tf.round(tf.sqrt(pixels)), tf.int32))
                    size = tf.minimum(size + 1 - size % 2, tf.minimum(height, width))
                    proposal = _proposal_l2(tf.gather(x, active), best_a, size, eps, clip, step_seed, table)
                logits = model.logits(_to_model(proposal, plain))
                y_a = tf.gather(y, active)
                new_value = _loss(logits, y_a, targeted, loss)
                new_success = objective(logits, y_a, targeted) if loss != "margin" else new_value
                # strictly better, as the authors' code; a success is always kept
                better = tf.logical_or(new_value > value_a, new_success > 0)
                kept = tf.where(better[:, None, None, None], proposal, best_a)
                best = tf.tensor_scatter_nd_update(best, rows, kept)
                value = tf.tensor_scatter_nd_update(value, rows, tf.where(better, new_value, value_a))
                success = tf.tensor_scatter_nd_update(success, rows,
                                                      tf.where(better, new_success, tf.gather(success, active)))
            return best, value, success

        return run

    return compiled(attack_model, ("square", norm, targeted, loss, clip, plain, rescale), factory)


def _check_images(attack_model) -> bool:
    """Does the model take ``(H, W)`` images (rather than ``(H, W, C)``)? Raise for other inputs."""
    shape = attack_model.input_shape
    if len(shape) == 3 and shape[-1] is not None:
        return False
    if len(shape) == 2:
        return True
    name = getattr(attack_model.model, "name", "model")
    raise ValueError(f"square attacks images shaped (H, W, C) or (H, W), but model '{name}' takes inputs shaped "
                     f"{shape}: use spsa for other inputs")


def _l2_start(images: np.ndarray, eps: float, seed: tf.Tensor) -> tf.Tensor:
    """The L2 initialization (Algorithm 3, "initialization"): ``(H // 5)``-sized meta-patterns
    ``η`` tiled from the centre, each with a random sign per image, tile and channel and, as
    the authors' ``eta``, transposed with probability 1/2 (per image and tile here), scaled
    to ``‖δ‖₂ = ε``."""
    count, height, width, channels = images.shape
    size = max(height // 5, 1)
    offset = max((height - 5 * size) // 2, 0)
    pattern = meta_pattern(size).astype(np.float32)
    tiles = []
    for top in range(offset, offset + size * (height // size), size):
        for left in range(offset, offset + size * (width // size), size):
            canvas = np.zeros((2, height, width), np.float32)
            for layer, tile in zip(canvas, (pattern, pattern.T)):
                window = layer[top:top + size, left:left + size]
                window += tile[:window.shape[0], :window.shape[1]]
            tiles.append(canvas)
    tiles = tf.constant(np.stack(tiles, axis=1))  # (2, T, H, W): the pattern, and transposed
    s_sign, s_flip = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    signs = rademacher([count, tiles.shape[1], channels], s_sign)
    flip = tf.cast(tf.random.stateless_uniform([count, tiles.shape[1], 1], s_flip) > 0.5, tf.float32)
    delta = (tf.einsum("thw,ntc->nhwc", tiles[0], signs * (1.0 - flip))
             + tf.einsum("thw,ntc->nhwc", tiles[1], signs * flip))
    return tf.constant(images) + eps * delta / (_l2(delta, [1, 2, 3]) + 1e-12)


def square(model, x, y=None, *, eps: float, norm="inf", queries: int = 1000, p_init: float = 0.05,
           rescale_schedule: bool = True, loss: str = "margin", targeted: bool = False,
           clip: Optional[Sequence[float]] = (0.0, 1.0), batch_size: int = 256, seed: Optional[int] = None,
           verbose: int = 1, output: str = "auto") -> np.ndarray:
    """Square Attack, L∞ or L2 (module docstring; Andriushchenko et al. 2020, Algorithms 1–3)
    — gradient-free.

    ``model``: a tf_keras classifier, or a deployed artifact loaded with
    :func:`keras_qrobust.export.load` (its outputs — logits, or probabilities read through
    ``log`` — are queried through its own runtime). ``queries``: the budget per example,
    counting every model evaluation — the clean input, the initialization and one per
    iteration; misclassified inputs use one and are returned unchanged. ``p_init``: 0.05 is
    the paper's ImageNet value; on 28×28 images larger squares (0.3, AutoAttack's 0.8) do
    better, and on models with low-bit activations, whose output is piecewise constant, much
    better. ``rescale_schedule``: halve ``p`` at the schedule's points rescaled to the budget
    (as ART) or at the raw iteration counts (as AutoAttack). ``loss``: ``"margin"`` or
    ``"ce"``. ``y``: true labels, or target labels with ``targeted=True``; by default the
    model's predictions. ``seed`` fixes every random draw (same seed and batch size, same
    result). ``output``: for a deployed artifact, ``"auto"`` reads its scores as
    probabilities when every row of the first (up to 64) inputs' scores lies in [0, 1] and
    sums to 1 (that probe is one extra query of those inputs), else as logits.

    AutoAttack's Square (Croce & Hein 2020, "standard" version): ``queries=5002`` (5,000
    iterations), ``p_init=0.8``, ``rescale_schedule=False``, margin loss.

    Where this differs from the authors' PyTorch code (``autoattack/square.py``): each image
    draws its own window positions, signs and pattern transpositions (there, one draw per
    batch and iteration); a window may start at any of the ``H − s + 1`` positions (there,
    ``H − s``); the L∞ window side is at most ``min(H, W) − 1`` and its signs are redrawn
    when the proposal would not change the window (as in the original square-attack code);
    ``rescale_schedule`` rescales the schedule to ``queries`` (there, to the iterations); an
    input counts as fooled once another class scores strictly higher (there, a tie counts);
    a targeted attack keeps the margin loss unless ``loss="ce"`` (there, always
    cross-entropy).
    """
    eps, norm = check_eps(eps), check_norm(norm)
    queries = check_count(queries, "queries", 2)
    p_init = check_eps(p_init, "p_init")
    if not 0 < p_init <= 1:
        raise ValueError(f"p_init must be in (0, 1], got {p_init!r}")
    if loss not in SQUARE_LOSSES:
        raise ValueError(f"loss must be one of {SQUARE_LOSSES}, got {loss!r}")
    batch_size = check_count(batch_size, "batch_size")
    # the numbers and the array are checked before a deployed artifact is first queried (its
    # output kind is read from the scores of the first inputs)
    x = check_array(x, clip)
    attack_model = as_query_model(model, output, probe=x)
    plain = _check_images(attack_model)
    x, y = check_inputs(attack_model, x, y, clip, require_labels=targeted)
    clip = clip_key(clip)
    if eps == 0:
        return x.copy()
    run = _compiled_square(attack_model, norm, bool(targeted), loss, clip, plain, bool(rescale_schedule))
    images = x[..., None] if plain else x
    table = tf.constant(_pattern_table(min(images.shape[1], images.shape[2])))
    numbers = (tf.constant(queries), tf.constant(eps, tf.float32), tf.constant(p_init, tf.float32))
    rng = generator(seed)
    out = np.empty_like(x)
    iterations = queries - 2  # the clean input and the initialization take one query each
    ticks = Ticks(len(range(0, len(x), batch_size)) * iterations, verbose, "square")
    for start in range(0, len(x), batch_size):
        part = slice(start, start + batch_size)
        best = _square_batch(run, attack_model, images[part], None if y is None else y[part], iterations,
                             numbers, table, batch_seed(rng), clip, bool(targeted), loss, norm, plain, ticks)
        out[part] = best[..., 0] if plain else best
    ticks.close()
    return out


def _square_batch(run, attack_model, images, y, iterations, numbers, table, seed, clip, targeted, loss, norm,
                  plain, ticks) -> np.ndarray:
    """Square Attack on one batch of ``(n, H, W, C)`` images."""
    y, success = clean_objective(attack_model, images[..., 0] if plain else images, y, targeted)
    todo = np.flatnonzero(success <= 0)
    best = images.copy()
    if len(todo) == 0:
        ticks.advance(iterations)
        return best
    eps = numbers[1]
    init_seed, loop_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    x_t, y_t = tf.constant(images[todo]), tf.constant(y[todo])
    if norm == "inf":
        # vertical stripes: one sign per column and channel (paper §3.1, "initialization")
        stripes = rademacher(tf.stack([len(todo), 1, tf.shape(x_t)[2], x_t.shape[-1]]), init_seed)
        start = into_ball(x_t + eps * stripes, x_t, eps, clip)
    else:
        start = _l2_start(images[todo], float(eps.numpy()), init_seed)
        start = start if clip is None else tf.clip_by_value(start, clip[0], clip[1])
    logits = attack_model.compiled_logits(_to_model(start, plain))
    state = (start, _loss(logits, y_t, targeted, loss), objective(logits, y_t, targeted))
    for first in range(0, iterations, _ITERATIONS_PER_CALL):
        count = min(_ITERATIONS_PER_CALL, iterations - first)
        if bool(tf.reduce_all(state[2] > 0)):
            ticks.advance(iterations - first)
            break
        state = run(x_t, y_t, *state, tf.constant(first), tf.constant(count), *numbers, loop_seed, table)
        ticks.advance(count)
    best[todo] = state[0].numpy()
    return best
