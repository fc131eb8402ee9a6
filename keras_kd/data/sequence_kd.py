"""Sequence-level distillation data for causal language models.

Two ways of letting generated text, rather than a fixed corpus, decide which
sequences a student is distilled on:

- `teacher_transfer_set`: sequence-level KD (Kim & Rush, "Sequence-Level
  Knowledge Distillation", EMNLP 2016). The teacher continues each prompt
  once (greedy by default; beam search with `sampler="beam"`, KerasHub's
  `BeamSampler`, which returns the best beam), and the student is trained on
  the teacher's continuations as targets. Batches are in the
  `(x, y, sample_weight)` format of `keras_kd.data.text.causal_lm_dataset`
  (KerasHub's `CausalLMPreprocessor`), so they go to `student.fit` (Seq-KD
  alone) or to a `keras_kd.Distiller` (`alpha=1`: Seq-KD; `0 < alpha < 1`:
  Seq-KD plus word-level KD on the teacher's own sequences, the paper's
  combination).
- `OnPolicyBatches`: the on-policy mix of GKD (Agarwal et al., "On-Policy
  Distillation of Language Models: Learning from Self-Generated Mistakes",
  ICLR 2024). A fraction `lmbda` of the batches of a source is replaced by
  sequences the *student* generates from their prompts with its current
  weights; the Distiller then scores them with the teacher token by token.

What the sample weights mean: a position's weight says whether its target
(the next token) is trained on. By default only generated tokens are
targets: the prompt's tokens are given, not predicted, and padding is
nothing (`loss_on_prompt=True` in `teacher_transfer_set` also trains on the
prompt, as `causal_lm_dataset` does). In an on-policy batch the next
tokens are the student's own samples, not labels: `y` is all
`keras_kd.UNLABELLED` (-1), so only the distillation term counts there,
whatever `alpha` is; the source's batches keep their labels.

The models are KerasHub `CausalLM`s built with `preprocessor=None` (token
ids in, token ids out), e.g. `keras_hub.models.GPT2CausalLM(backbone=...,
preprocessor=None)`. A model's own sampler (`compile(sampler=...)`) is left
as it is: generation here uses the `sampler` given to these functions,
swapped in for each `generate` call and swapped back after it.
Only naming a sampler by string imports KerasHub.
"""

import contextlib

import keras
import numpy as np
import tensorflow as tf

from keras_kd.data.text import PAD_ID
from keras_kd.distillation.batch import UNLABELLED

__all__ = [
    "OnPolicyBatches",
    "causal_lm_examples",
    "generate_sequences",
    "teacher_transfer_set",
]

_MAX_SEED = 2**31 - 1


def _check_int(value, name, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"`{name}` must be {kind}. Received: {name}={value!r}.")
    return int(value)


def _check_seed(seed):
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not (
        0 <= seed <= _MAX_SEED
    ):
        raise ValueError(
            f"`seed` must be an integer in [0, 2**31 - 1]. Received: seed={seed!r}."
        )
    return int(seed)


def _derived_seed(*keys):
    """A seed in [0, 2**31) that depends only on `keys` (non-negative ints)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, np.uint32)[0] >> 1)


def _check_generator(model, argument):
    """Raises unless `model` is a KerasHub-style CausalLM without preprocessor."""
    missing = [
        name for name in ("generate", "make_generate_function")
        if not callable(getattr(model, name, None))
    ] + [name for name in ("sampler", "generate_function") if not hasattr(model, name)]
    if missing:
        raise TypeError(
            f"`{argument}` must be a KerasHub CausalLM (with `generate`, "
            "`make_generate_function`, `sampler` and `generate_function`), e.g. "
            "`keras_hub.models.GPT2CausalLM(backbone=..., preprocessor=None)`. "
            f"Received: {argument} of type {type(model).__name__}, which lacks "
            f"{missing}."
        )
    if getattr(model, "preprocessor", None) is not None:
        raise ValueError(
            f"`{argument}` has a preprocessor ({type(model.preprocessor).__name__}), "
            "so its `generate` expects strings, but prompts here are token ids. "
            f"Build it with `preprocessor=None`, or detach it: `{argument}.preprocessor = None`."
        )


def _model_limits(model):
    """`(vocabulary_size, max_sequence_length)` of a KerasHub model, or None."""
    backbone = getattr(model, "backbone", None)
    vocabulary_size = getattr(backbone, "vocabulary_size", None)
    max_length = getattr(backbone, "max_sequence_length", None)
    return (
        vocabulary_size if isinstance(vocabulary_size, int) else None,
        max_length if isinstance(max_length, int) else None,
    )


def _resolve_sampler(sampler):
    """A KerasHub sampler: `None` is greedy decoding, a string a sampler name
    (`"greedy"`, `"beam"`, `"top_k"`, `"top_p"`, `"random"`, ...), an instance
    is used as it is."""
    if sampler is None:
        sampler = "greedy"
    if isinstance(sampler, (str, dict)):
        try:
            import keras_hub
        except ImportError as error:
            raise ImportError(
                f"Naming a sampler (sampler={sampler!r}) needs KerasHub. Install "
                "keras-hub, or pass a sampler instance."
            ) from error
        try:
            resolved = keras_hub.samplers.get(sampler)
        except (ValueError, TypeError) as error:
            resolved = error
        if not callable(resolved):  # `get` gives an unknown name back.
            raise ValueError(
                f"`sampler` names no KerasHub sampler. Received: sampler={sampler!r}. "
                "Pass 'greedy', 'beam', 'top_k', 'top_p', 'random' or a "
                "`keras_hub.samplers.Sampler`."
            )
        return resolved
    if not callable(sampler):
        raise ValueError(
            "`sampler` must be None (greedy), a KerasHub sampler name or a "
            f"`keras_hub.samplers.Sampler`. Received: sampler={sampler!r}."
        )
    return sampler


def _seed_sampler(sampler, seed):
    """Sets every seed generator of a sampler to `[seed, 0]`: what it draws
    next depends on `seed` only, not on earlier calls."""
    for variable in getattr(sampler, "variables", ()) or ():
        variable.assign(np.array([seed, 0], dtype=keras.backend.standardize_dtype(variable.dtype)))


def _generation_context(model):
    """The context `model.generate` runs in: on JAX with 64-bit types on
    (`JAX_ENABLE_X64=1`), 64-bit types off.

    KerasHub's `generate` fails on JAX under x64 ("index arguments to
    dynamic_slice must be integers of the same type, got: int64, int32"):
    its models' `generate_step` slices the prompt with
    `ops.slice(prompt, [0, index - 1], ...)`, where the Python 0 becomes
    int64 under x64 and `index` (from an int32 sum of the padding mask) is
    int32, and `jax.lax.dynamic_slice` takes one integer type. The inputs
    are int32 token ids, so with a float32 (or lower) model only those
    Python scalars change type. A model with float64 weights is left as it
    is (x64 off would compute it in float32)."""
    if keras.backend.backend() != "jax":
        return contextlib.nullcontext()
    import jax

    if not jax.config.jax_enable_x64 or any(
        "64" in keras.backend.standardize_dtype(v.dtype)
        for v in getattr(model, "weights", ())
        if "float" in keras.backend.standardize_dtype(v.dtype)
    ):
        return contextlib.nullcontext()
    return jax.enable_x64(False)


class _Generator:
    """Runs `model.generate` with a sampler of its own.

    The model's `sampler` and compiled `generate_function` are swapped for
    this object's during the call and put back after it, so the model's own
    generation is unchanged, and the function traced with this sampler is
    kept for the next call (a new trace only for a new batch shape).
    """

    def __init__(self, model, sampler, stop_token_ids):
        self.model = model
        self.sampler = sampler
        self.stop_token_ids = None if stop_token_ids is None else tuple(
            int(i) for i in stop_token_ids)
        self._function = None

    def __call__(self, token_ids, padding_mask, seed):
        model = self.model
        saved = (model.sampler, model.generate_function)
        model.sampler, model.generate_function = self.sampler, self._function
        try:
            _seed_sampler(self.sampler, seed)
            with _generation_context(model):
                outputs = model.generate(
                    {"token_ids": token_ids, "padding_mask": padding_mask},
                    stop_token_ids=self.stop_token_ids,
                )
            self._function = model.generate_function
        finally:
            model.sampler, model.generate_function = saved
        ids = np.asarray(outputs["token_ids"]).astype(np.int32)
        mask = np.asarray(outputs["padding_mask"]).astype(bool)
        # Positions after a stop token are padding (mask False): pad ids there.
        return np.where(mask, ids, PAD_ID).astype(np.int32), mask


def _prefix_lengths(mask, argument):
    """Row lengths of a right-padded mask (True then False), or an error."""
    lengths = mask.sum(axis=1)
    expected = np.arange(mask.shape[1])[None, :] < lengths[:, None]
    bad = np.flatnonzero((expected != mask).any(axis=1))
    if bad.size:
        raise ValueError(
            f"`{argument}` must mark each prompt's tokens at its start (True "
            "then False: right padding, as KerasHub's generate expects). "
            f"Received: rows {bad[:5].tolist()} with a False before a True."
        )
    empty = np.flatnonzero(lengths == 0)
    if empty.size:
        raise ValueError(
            f"`{argument}` leaves rows {empty[:5].tolist()} without any prompt "
            "token; generation needs at least one. Drop those rows, or give "
            "them a start token."
        )
    return lengths


def generate_sequences(model, prompts, max_length, prompt_mask=None, batch_size=32,
                       sampler=None, seed=0, stop_token_ids=None):
    """Lets a CausalLM continue token-id prompts, batch by batch.

    Args:
        model: A KerasHub `CausalLM` with `preprocessor=None`.
        prompts: Integer token ids `(num_prompts, prompt_length)`.
        max_length: Length of each generated sequence, prompt included:
            `prompt_length < max_length <= ` the model's maximum sequence
            length.
        prompt_mask: Optional booleans of the shape of `prompts`, True on each
            prompt's tokens, at its start (right padding); `None`: every
            token is prompt.
        batch_size: Prompts per `generate` call.
        sampler: `None` (greedy), a KerasHub sampler name (`"beam"`,
            `"top_k"`, `"random"`, ...) or a `keras_hub.samplers.Sampler`.
            Its seed generators are reset before each batch (see `seed`).
        seed: Integer seed: batch `i` is sampled with a seed that depends
            only on `(seed, i)`, so the result does not depend on what ran
            before.
        stop_token_ids: `None` (default): every sequence runs to
            `max_length`; or token ids after which a sequence ends (its
            later positions become padding).

    Returns:
        `(token_ids, padding_mask, prompt_mask)`, NumPy arrays of shape
        `(num_prompts, max_length)`: int32 ids (`PAD_ID` on padding), and
        booleans for the real tokens and for the prompt's tokens.

    Raises:
        TypeError: if `model` is not a KerasHub CausalLM.
        ValueError: for a model with a preprocessor, prompts that are not a
            2-D integer array (or ids outside the vocabulary), a bad
            `prompt_mask`, `max_length <= prompt_length` or beyond the
            model's maximum length, or a bad size, seed or sampler.
    """
    _check_generator(model, "model")
    batch_size = _check_int(batch_size, "batch_size", 1)
    seed = _check_seed(seed)
    ids = np.asarray(prompts)
    if ids.ndim != 2 or ids.shape[0] == 0 or ids.shape[1] == 0 or ids.dtype.kind not in "iu":
        raise ValueError(
            "`prompts` must be integer token ids of shape (num_prompts, "
            "prompt_length), both at least 1. Received: prompts of dtype "
            f"{ids.dtype} and shape {ids.shape}. Stack the prompts (right-padded, "
            "with `prompt_mask`) into one array."
        )
    num_prompts, prompt_length = ids.shape
    if prompt_mask is None:
        mask = np.ones(ids.shape, bool)
    else:
        mask = np.asarray(prompt_mask)
        if mask.shape != ids.shape or mask.dtype.kind not in "biu":
            raise ValueError(
                "`prompt_mask` must be booleans of the shape of `prompts` "
                f"{ids.shape}. Received: prompt_mask of dtype {mask.dtype} and "
                f"shape {mask.shape}."
            )
        mask = mask.astype(bool)
        _prefix_lengths(mask, "prompt_mask")
    vocabulary_size, model_length = _model_limits(model)
    real = ids[mask]
    if real.min() < 0 or (vocabulary_size is not None and real.max() >= vocabulary_size):
        raise ValueError(
            f"`prompts` holds ids from {real.min()} to {real.max()}, outside the "
            f"model's vocabulary [0, {vocabulary_size}). Encode the prompts with "
            "the model's vocabulary."
        )
    max_length = _check_int(max_length, "max_length", 1)
    if max_length <= prompt_length:
        raise ValueError(
            f"`max_length` must exceed the prompt length, or nothing is generated. "
            f"Received: max_length={max_length} for prompts of length {prompt_length}. "
            f"Pass max_length > {prompt_length}, or shorter prompts."
        )
    if model_length is not None and max_length > model_length:
        raise ValueError(
            f"`max_length` exceeds the model's maximum sequence length "
            f"({model_length}). Received: max_length={max_length}. Pass "
            f"max_length <= {model_length}, or a model with longer positions."
        )
    generator = _Generator(model, _resolve_sampler(sampler), stop_token_ids)
    buffer = np.full((num_prompts, max_length), PAD_ID, np.int32)
    buffer[:, :prompt_length] = np.where(mask, ids, PAD_ID)
    given = np.zeros((num_prompts, max_length), bool)
    given[:, :prompt_length] = mask
    token_ids, padding_mask = [], []
    for number, start in enumerate(range(0, num_prompts, batch_size)):
        rows = slice(start, start + batch_size)
        batch_ids, batch_mask = generator(buffer[rows], given[rows], _derived_seed(seed, number))
        token_ids.append(batch_ids)
        padding_mask.append(batch_mask)
    return np.concatenate(token_ids), np.concatenate(padding_mask), given


def causal_lm_examples(token_ids, padding_mask, prompt_mask=None, loss_on_prompt=False):
    """Cuts whole sequences into CausalLM `(x, y, sample_weight)` arrays.

    As KerasHub's `CausalLMPreprocessor`: `x = {"token_ids": ids[:, :-1],
    "padding_mask": mask[:, :-1]}`, `y = ids[:, 1:]`, and the sample weight
    of a position says whether its target `y` (the next token) is trained
    on: a real token that is not part of the prompt (or, with
    `loss_on_prompt=True`, any real token: `mask[:, 1:]`).

    Args:
        token_ids: Integer ids `(num_sequences, length)`, `length >= 2`.
        padding_mask: Booleans of that shape, True on real tokens.
        prompt_mask: Optional booleans of that shape, True on prompt tokens.
        loss_on_prompt: Whether prompt tokens are targets too.

    Returns:
        `(x, y, sample_weight)` NumPy arrays (int32, bool, int32, bool),
        each of length `length - 1`.

    Raises:
        ValueError: for arrays of other shapes or dtypes.

    Example:

    >>> ids = np.array([[5, 6, 7, 8, 0]])
    >>> mask = np.array([[1, 1, 1, 1, 0]], bool)
    >>> prompt = np.array([[1, 1, 0, 0, 0]], bool)
    >>> x, y, weight = causal_lm_examples(ids, mask, prompt)
    >>> x["token_ids"].tolist(), y.tolist()
    ([[5, 6, 7, 8]], [[6, 7, 8, 0]])
    >>> weight.astype(int).tolist()  # The targets 7 and 8, not 6 (prompt) or 0.
    [[0, 1, 1, 0]]
    >>> causal_lm_examples(ids, mask, prompt, loss_on_prompt=True)[2].astype(int).tolist()
    [[1, 1, 1, 0]]
    """
    ids = np.asarray(token_ids)
    if ids.ndim != 2 or ids.shape[1] < 2 or ids.dtype.kind not in "iu":
        raise ValueError(
            "`token_ids` must be integer ids of shape (num_sequences, length) with "
            f"length >= 2. Received: dtype {ids.dtype} and shape {ids.shape}."
        )
    masks = {"padding_mask": padding_mask, "prompt_mask": prompt_mask}
    for name, value in masks.items():
        if value is None:
            continue
        value = np.asarray(value)
        if value.shape != ids.shape or value.dtype.kind not in "biu":
            raise ValueError(
                f"`{name}` must be booleans of the shape of `token_ids` {ids.shape}. "
                f"Received: dtype {value.dtype} and shape {value.shape}."
            )
        masks[name] = value.astype(bool)
    mask = masks["padding_mask"]
    targets = mask if loss_on_prompt or masks["prompt_mask"] is None else (
        mask & ~masks["prompt_mask"])
    ids = ids.astype(np.int32)
    x = {"token_ids": ids[:, :-1], "padding_mask": mask[:, :-1]}
    return x, ids[:, 1:], targets[:, 1:]


def teacher_transfer_set(teacher, prompts, max_length, batch_size=32, sampler=None, seed=0,
                         prompt_mask=None, loss_on_prompt=False, stop_token_ids=None):
    """Sequence-level KD: the teacher's continuations of prompts, as batches.

    The teacher continues each prompt up to `max_length` tokens (Kim & Rush
    2016 use beam search: `sampler="beam"`; the default is greedy), and
    every sequence becomes one CausalLM example (see `causal_lm_examples`):
    inputs of length `max_length - 1`, the next tokens as labels, and sample
    weights on the teacher's continuation only (the prompt is given, not
    predicted, and padding is nothing), so the student learns to continue as
    the teacher does. `loss_on_prompt=True` weighs the prompt's tokens
    too, as `keras_kd.data.text.causal_lm_dataset` does.

    Args:
        teacher: A KerasHub `CausalLM` with `preprocessor=None`.
        prompts: Integer token ids `(num_prompts, prompt_length)`.
        max_length: Length of each sequence, prompt included
            (`prompt_length < max_length <=` the teacher's maximum length);
            the examples are one token shorter.
        batch_size: Prompts per `generate` call and examples per batch.
        sampler: `None` (greedy), a KerasHub sampler name or instance; see
            `generate_sequences`.
        seed: Integer seed of the sampler: the same seed gives the same set
            (greedy and beam search draw nothing).
        prompt_mask: Optional booleans of the shape of `prompts` for prompts
            of several lengths (right-padded).
        loss_on_prompt: Whether prompt tokens are targets too.
        stop_token_ids: Optional ids that end a sequence (the rest is
            padding, weight 0).

    Returns:
        A finite, unshuffled `tf.data.Dataset` of `(x, y, sample_weight)`
        batches: `x = {"token_ids": int32, "padding_mask": bool}`, `y`
        int32, `sample_weight` bool, all `(batch, max_length - 1)`. Shuffle
        it with `.unbatch().shuffle(n, seed=...).batch(b)`; for the arrays
        use `generate_sequences` and `causal_lm_examples`.

    Raises:
        TypeError: if `teacher` is not a KerasHub CausalLM.
        ValueError: see `generate_sequences`.

    Example:

    ```python
    transfer = teacher_transfer_set(teacher, prompts, max_length=65, sampler="beam")
    distiller.compile(optimizer="adam", alpha=1.0)  # Seq-KD: the teacher's tokens as labels.
    distiller.fit(transfer, epochs=3)
    ```
    """
    _check_generator(teacher, "teacher")
    token_ids, padding_mask, given = generate_sequences(
        teacher, prompts, max_length, prompt_mask=prompt_mask, batch_size=batch_size,
        sampler=sampler, seed=seed, stop_token_ids=stop_token_ids,
    )
    x, y, sample_weight = causal_lm_examples(token_ids, padding_mask, given, loss_on_prompt)
    return tf.data.Dataset.from_tensor_slices((x, y, sample_weight)).batch(batch_size)


def _to_numpy(structure):
    return tf.nest.map_structure(
        lambda value: value.numpy() if hasattr(value, "numpy") else np.asarray(value), structure)


class OnPolicyBatches(keras.utils.PyDataset):
    """GKD's on-policy mix: some batches are the student's own sequences.

    For batch `index` of epoch `epoch`, a seeded draw (`is_on_policy`)
    decides with probability `lmbda` whether the batch is on-policy. An
    off-policy batch is the source's batch, unchanged. An on-policy batch
    keeps the first `prompt_length` tokens of each source sequence as its
    prompt, and the student (with its current weights) generates the rest
    of the `x` length `L`:

    - `x = {"token_ids": g, "padding_mask": m}`, the generated sequences
      `g` (prompt included) and their real tokens `m`;
    - `y`: `keras_kd.UNLABELLED` (-1) everywhere: the tokens are the
      student's own, no labels, so the hard term does not count there (at
      any `alpha`) and label metrics skip the batch;
    - `sample_weight` at position `t`: whether token `t + 1` was generated,
      so the distillation term compares teacher and student on the
      generated tokens only (not the prompt, not padding). The last position
      has no next token in `g` and weighs 0.

    The Distiller then runs the teacher on `x` and distils token by token.
    GKD itself uses `alpha=0`; with `alpha > 0` the hard term trains on the
    source's labels, in the off-policy batches only.

    Training with `Distiller.fit`: pass this object as `x` (it has its own
    order: Keras' `shuffle` does not apply). Generation runs in `__getitem__`,
    which Keras calls from the threads of its `tf.data` pipeline, one call
    at a time (one worker, no multiprocessing: `generate` needs the live
    model). That pipeline reads ahead (`prefetch(AUTOTUNE)`): batch `k` is
    typically generated while step `k - 1` runs, so with weights one or two
    updates old, possibly while an update is being applied; GKD assumes the
    current weights. Keras also reads the first two batches before the
    first epoch, to learn their shapes (two more generations). Nothing else
    may run `student.generate` during `fit` (the sampler is swapped in for
    each call).

    Epochs: `epoch` counts the epochs Keras ran (`on_epoch_begin` then
    `on_epoch_end`); set it to `initial_epoch` when resuming a `fit`.

    Args:
        source: The off-policy batches `(x, y, sample_weight)`, `x` a dict
            with `"token_ids"` and `"padding_mask"` of shape `(batch, L)`
            (`keras_kd.data.text.causal_lm_dataset`): a finite
            `tf.data.Dataset` (read once per epoch and held for it, so that
            batches can be indexed), or a `keras.utils.PyDataset` or list of
            batches (indexed; a PyDataset's epoch hooks are called).
        student: The KerasHub `CausalLM` being trained
            (`preprocessor=None`).
        lmbda: Fraction of on-policy batches, in `[0, 1]` (GKD's lambda);
            settable between epochs.
        prompt_length: Tokens of each sequence kept as the prompt, in
            `[1, L - 1]` (a padded sequence shorter than that keeps its real
            tokens).
        sampler: How the student generates: `None` (greedy), a KerasHub
            sampler name or instance. GKD samples (`"random"`, temperature 1).
        seed: Integer seed of the draws and of the sampler: batch `index` of
            epoch `epoch` is on-policy, and sampled, the same way in every
            run.
        stop_token_ids: Optional ids that end a generated sequence.
        max_queue_size: As `keras.utils.PyDataset` (unused with one worker).

    Raises:
        TypeError: if `student` is not a KerasHub CausalLM or `source` not
            batches.
        RuntimeError: on the JAX backend (during `fit`, Keras' JAX trainer holds the weights in its compiled state: the input
            pipeline cannot generate with them).
        ValueError: for a bad `lmbda`, `prompt_length` or `seed`, an endless
            source, and (when read) batches not in the CausalLM format.

    Example:

    ```python
    batches = OnPolicyBatches(causal_lm_dataset(ids, 64, 16), student,
                              lmbda=0.5, prompt_length=16, sampler="random")
    distiller = keras_kd.Distiller(student=student, teacher=teacher)
    distiller.compile(optimizer="adam", alpha=0.0,
                      distillation_loss_fn=keras_kd.GeneralizedJSD(0.5))
    distiller.fit(batches, epochs=3)
    ```
    """

    def __init__(self, source, student, lmbda, prompt_length, sampler=None, seed=0,
                 stop_token_ids=None, max_queue_size=10):
        if keras.backend.backend() == "jax":
            # Keras' JAX `fit` keeps the weights in its compiled state and
            # empties the variables for the epoch (and donates that state to
            # each step): a generation in the input pipeline has no current
            # weights to read.
            raise RuntimeError(
                "OnPolicyBatches generates with the student's current weights inside "
                "`fit`'s input pipeline, which the JAX backend does not allow: during "
                "`fit` Keras keeps the weights in its compiled step's state, not in "
                "the variables. Use KERAS_BACKEND=tensorflow for "
                "on-policy distillation, or distil off-policy from teacher-generated "
                "sequences (`keras_kd.data.sequence_kd.teacher_transfer_set`)."
            )
        super().__init__(workers=1, use_multiprocessing=False, max_queue_size=max_queue_size)
        _check_generator(student, "student")
        self.student = student
        self.lmbda = lmbda
        self.prompt_length = _check_int(prompt_length, "prompt_length", 1)
        self.seed = _check_seed(seed)
        self._generator = _Generator(student, _resolve_sampler(sampler), stop_token_ids)
        self.epoch = 0
        self._in_epoch = False
        self._source = source
        self._cache = None
        self._iterator = None
        if isinstance(source, tf.data.Dataset):
            cardinality = int(source.cardinality())
            if cardinality < 0:
                raise ValueError(
                    "`source` must be a finite dataset of known length, but its "
                    "cardinality is "
                    f"{'infinite' if cardinality == tf.data.INFINITE_CARDINALITY else 'unknown'}"
                    ". Pass a finite dataset (no `repeat()`), or apply "
                    "`dataset.apply(tf.data.experimental.assert_cardinality(n))`."
                )
            self._length = cardinality
        elif hasattr(source, "__getitem__") and hasattr(source, "__len__") and not isinstance(
            source, (dict, str)
        ):
            self._length = len(source)
        else:
            raise TypeError(
                "`source` must be a finite `tf.data.Dataset`, a `keras.utils.PyDataset` "
                "or a list of (x, y, sample_weight) batches. Received: source of type "
                f"{type(source).__name__}."
            )
        if self._length == 0:
            raise ValueError("`source` has no batch. Pass at least one batch.")

    @property
    def lmbda(self):
        """Fraction of on-policy batches, in `[0, 1]`."""
        return self._lmbda

    @lmbda.setter
    def lmbda(self, value):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not (
            0.0 <= float(value) <= 1.0
        ):
            raise ValueError(
                f"`lmbda` must be a number in [0, 1] (the fraction of on-policy "
                f"batches). Received: lmbda={value!r}."
            )
        self._lmbda = float(value)

    def __len__(self):
        return self._length

    def is_on_policy(self, index, epoch=None):
        """Whether batch `index` of `epoch` (default: the current one) is
        student-generated: a draw that depends on `(seed, epoch, index)` only."""
        epoch = self.epoch if epoch is None else epoch
        draw = np.random.default_rng([self.seed, int(epoch), int(index)]).random()
        return bool(draw < self._lmbda)

    def source_batch(self, index):
        """The source's batch `index` of the current epoch."""
        if isinstance(self._source, tf.data.Dataset):
            if self._cache is None:
                self._cache, self._iterator = [], iter(self._source)
            while len(self._cache) <= index:
                self._cache.append(_to_numpy(next(self._iterator)))
            return self._cache[index]
        return self._source[index]

    def __getitem__(self, index):
        if not 0 <= index < self._length:
            raise IndexError(f"Batch index {index} is outside [0, {self._length}).")
        batch = self.source_batch(index)
        x, y, sample_weight = self._check_batch(batch, index)
        if not self.is_on_policy(index):
            return batch
        return self.generate_batch(x, y, sample_weight, _derived_seed(self.seed, self.epoch, index))

    def generate_batch(self, x, y, sample_weight, seed=0):
        """The on-policy batch of one source batch: the student continues the
        first `prompt_length` tokens of each sequence (see the class)."""
        ids = np.asarray(x["token_ids"])
        mask = np.asarray(x["padding_mask"]).astype(bool)
        given = np.zeros(mask.shape, bool)
        given[:, : self.prompt_length] = mask[:, : self.prompt_length]
        _prefix_lengths(given, "the source's padding_mask (its first prompt_length tokens)")
        prompt = np.where(given, ids, PAD_ID).astype(np.int32)
        generated_ids, generated_mask = self._generator(prompt, given, seed)
        targets = np.zeros(mask.shape, bool)
        targets[:, :-1] = (generated_mask & ~given)[:, 1:]
        y_dtype = np.asarray(y).dtype
        weight_dtype = np.asarray(sample_weight).dtype
        x_new = {
            "token_ids": generated_ids.astype(ids.dtype),
            "padding_mask": generated_mask.astype(np.asarray(x["padding_mask"]).dtype),
        }
        return (
            x_new,
            np.full(ids.shape, UNLABELLED, dtype=y_dtype),
            targets.astype(weight_dtype),
        )

    def _check_batch(self, batch, index):
        if not (isinstance(batch, (tuple, list)) and len(batch) == 3):
            raise ValueError(
                "`source` must give (x, y, sample_weight) batches, as "
                "`causal_lm_dataset` does. Received: batch "
                f"{index} of type {type(batch).__name__}"
                + (f" with {len(batch)} parts." if isinstance(batch, (tuple, list)) else ".")
            )
        x, y, sample_weight = batch
        if not (isinstance(x, dict) and "token_ids" in x and "padding_mask" in x):
            keys = sorted(x) if isinstance(x, dict) else type(x).__name__
            raise ValueError(
                "The source's `x` must be a dict with 'token_ids' and 'padding_mask' "
                f"(a KerasHub CausalLM's inputs). Received: x of batch {index}: {keys}."
            )
        shape = tuple(np.shape(x["token_ids"]))
        shapes = {
            "padding_mask": tuple(np.shape(x["padding_mask"])),
            "y": tuple(np.shape(y)),
            "sample_weight": tuple(np.shape(sample_weight)),
        }
        if len(shape) != 2 or any(s != shape for s in shapes.values()):
            raise ValueError(
                "The source's token_ids, padding_mask, y and sample_weight must all "
                f"be (batch, length). Received for batch {index}: token_ids {shape}, "
                + ", ".join(f"{k} {v}" for k, v in shapes.items()) + "."
            )
        if np.asarray(y).dtype.kind != "i":
            raise ValueError(
                "The source's labels `y` must be signed integers (token ids), so "
                f"that on-policy batches can mark them UNLABELLED ({UNLABELLED}). "
                f"Received: y of dtype {np.asarray(y).dtype} in batch {index}."
            )
        if not 1 <= self.prompt_length <= shape[1] - 1:
            raise ValueError(
                f"`prompt_length` must leave at least one token to generate: "
                f"1 <= prompt_length <= {shape[1] - 1} for sequences of length "
                f"{shape[1]}. Received: prompt_length={self.prompt_length}."
            )
        return x, y, sample_weight

    def on_epoch_begin(self):
        self._in_epoch = True
        if isinstance(self._source, keras.utils.PyDataset):
            self._source.on_epoch_begin()

    def on_epoch_end(self):
        """Ends an epoch that began (`epoch += 1`: new draws, the source's next
        epoch). Keras also calls this once before the first epoch, after
        reading the first batches for their shapes: that call is ignored, so
        those batches and the first epoch's are the same."""
        if not self._in_epoch:
            return
        self._in_epoch = False
        self.epoch += 1
        self._cache = self._iterator = None
        if isinstance(self._source, keras.utils.PyDataset):
            self._source.on_epoch_end()
