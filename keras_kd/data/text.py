"""Real text for language-model distillation, offline: ten Shakespeare plays,
a character vocabulary, causal-LM batches and bits per character.

The bundled `data/shakespeare-10-plays.txt.gz` holds ten Project Gutenberg
plays (public domain, see `data/SHAKESPEARE.md`). `load_plays` splits it
into `(title, text)` pairs, so that held-out text can be a whole play (lines
of one play are not independent of each other). `CharacterVocabulary` maps
characters to ids (0 is padding, 1 out-of-vocabulary), `causal_lm_dataset`
cuts the ids into the `(x, y, sample_weight)` batches that KerasHub's
`CausalLMPreprocessor` gives a `CausalLM`, and `bits_per_character`
evaluates a model on them from its logits.

Nothing here imports KerasHub: any Keras model that maps token ids
`(batch, length)` to logits `(batch, length, vocabulary_size)` works, e.g.
`keras_hub.models.GPT2CausalLM(backbone=..., preprocessor=None)`.
"""

import gzip
import hashlib
import math
import os
import re
from importlib import resources

import keras
import numpy as np
import tensorflow as tf

SHAKESPEARE_SHA256 = "1d5056d3b3af173721730669c68c754df5e248ab19c4c88be360fd19ba925ad7"
"""sha256 of the uncompressed bundled text (checked on load)."""

PLAY_TITLES = (
    "Hamlet",
    "King Lear",
    "Othello",
    "Romeo and Juliet",
    "Julius Caesar",
    "The Merchant of Venice",
    "A Midsummer Night's Dream",
    "Much Ado About Nothing",
    "Twelfth Night",
    "As You Like It",
)
"""The plays of the bundled text, in file order."""

NUM_PLAYS = len(PLAY_TITLES)

# Each play opens with its heading as printed in the text, then a blank
# line and "by William Shakespeare".
_HEADINGS = dict(
    zip(
        (
            "HAMLET, PRINCE OF DENMARK",
            "THE TRAGEDY OF KING LEAR",
            "OTHELLO, THE MOOR OF VENICE",
            "ROMEO AND JULIET",
            "JULIUS CAESAR",
            "THE MERCHANT OF VENICE",
            "A MIDSUMMER NIGHT'S DREAM",
            "MUCH ADO ABOUT NOTHING",
            "TWELFTH NIGHT; OR, WHAT YOU WILL",
            "AS YOU LIKE IT",
        ),
        PLAY_TITLES,
    )
)
_PLAY_START = re.compile(r"^([^\n]+?)[ \t]*\r?\n[ \t]*\r?\nby William Shakespeare[ \t]*\r?$", re.M)

PAD_ID = 0
"""Token id of padding (`padding_mask` False)."""
OOV_ID = 1
"""Token id of a character outside the vocabulary."""


def shakespeare_path():
    """Returns the path of the bundled `shakespeare-10-plays.txt.gz`.

    Returns:
        The path as a `str` (the file is gzip-compressed ASCII text).

    Example:

    >>> shakespeare_path().endswith("shakespeare-10-plays.txt.gz")
    True
    """
    return str(resources.files("keras_kd").joinpath("data/shakespeare-10-plays.txt.gz"))


def load_text(path=None):
    """Reads the ten plays as one string.

    Args:
        path: `None` (default) for the bundled `.gz` file, whose sha256 is
            checked; or the path of a copy of the same text, gzip-compressed
            (name ending in `.gz`) or plain UTF-8/ASCII text.

    Returns:
        The whole text, a `str`.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if the file is not gzip data although its name ends in
            `.gz`, is not UTF-8 text, or (bundled file) its checksum does not
            match.

    Example:

    >>> len(load_text())
    1317534
    """
    bundled = path is None
    if bundled:
        path = shakespeare_path()
    elif not isinstance(path, (str, os.PathLike)):
        raise TypeError(
            "`path` must be a file path (str or os.PathLike) or None for the bundled "
            f"text. Received: path={path!r} of type {type(path).__name__}."
        )
    path = os.fspath(path)
    if not os.path.isfile(path):
        if bundled:
            raise FileNotFoundError(
                f"The bundled text {path} is missing from this keras-kd install. "
                "Reinstall keras-kd, or pass `path=` to a copy of "
                "shakespeare-10-plays.txt (.txt or .txt.gz)."
            )
        raise FileNotFoundError(
            f"`path` names no file. Received: path={path!r}. Pass the path of "
            "shakespeare-10-plays.txt (.txt or .txt.gz), or path=None for the bundled copy."
        )
    if path.endswith(".gz"):
        try:
            with gzip.open(path, "rb") as f:
                content = f.read()
        except (OSError, EOFError) as error:
            raise ValueError(
                f"`path` ends in .gz but is not readable gzip data ({error}). "
                f"Received: path={path!r}. Pass an intact .gz file or the plain .txt."
            ) from error
    else:
        with open(path, "rb") as f:
            content = f.read()
    if bundled:
        digest = hashlib.sha256(content).hexdigest()
        if digest != SHAKESPEARE_SHA256:
            raise ValueError(
                f"The bundled text {path} is damaged: sha256 {digest} of its content, "
                f"expected {SHAKESPEARE_SHA256}. Reinstall keras-kd."
            )
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"`path` is not UTF-8 text ({error}). Received: path={path!r}. "
            "Pass shakespeare-10-plays.txt (.txt or .txt.gz)."
        ) from error


def load_plays(path=None):
    """Splits the ten plays apart, in file order.

    Each play starts at its heading (e.g. `"HAMLET, PRINCE OF DENMARK"`,
    followed by `"by William Shakespeare"`) and runs to the next play's
    heading, so that the texts joined together give back the file exactly.

    Args:
        path: `None` (default) for the bundled text, or a `.txt`/`.txt.gz`
            copy of it (see `load_text`).

    Returns:
        A list of 10 `(title, text)` pairs, titles as in `PLAY_TITLES`
        (`"Hamlet"`, ..., `"As You Like It"`).

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if the file cannot be read as text (see `load_text`), or
            does not split into exactly the ten plays.

    Example:

    >>> plays = load_plays()
    >>> [title for title, _ in plays][:3]
    ['Hamlet', 'King Lear', 'Othello']
    >>> "To be, or not to be" in dict(plays)["Hamlet"]
    True
    """
    text = load_text(path)
    where = shakespeare_path() if path is None else os.fspath(path)
    matches = list(_PLAY_START.finditer(text))
    headings = [match.group(1).strip() for match in matches]
    titles = [_HEADINGS.get(heading) for heading in headings]
    if titles != list(PLAY_TITLES):
        raise ValueError(
            f"`path` does not split into the {NUM_PLAYS} plays {list(PLAY_TITLES)}: "
            f"found {len(matches)} play heading(s) (a line followed by a blank line "
            f"and 'by William Shakespeare'): {headings}. Received: path={where!r}. "
            "Pass shakespeare-10-plays.txt (.txt or .txt.gz), or path=None for the "
            "bundled copy."
        )
    starts = [0] + [match.start() for match in matches[1:]] + [len(text)]
    return [(title, text[start:end]) for title, start, end in zip(titles, starts, starts[1:])]


class CharacterVocabulary:
    """Maps characters to token ids and back.

    Id 0 (`PAD_ID`) is padding and decodes to nothing; id 1 (`OOV_ID`) is
    any character outside the vocabulary and decodes to `unknown`; the
    characters take ids 2, 3, ... in the order given. Encoding is
    vectorised (NumPy): well under a second for the 1.3 M characters of
    the plays.

    Args:
        characters: The vocabulary: a string (or an iterable of
            one-character strings) of distinct characters.
        unknown: What an out-of-vocabulary id decodes to.

    Raises:
        ValueError: if `characters` is empty, repeats a character or holds
            something other than single characters.

    Example:

    >>> vocabulary = CharacterVocabulary.from_text("to be or not")
    >>> vocabulary.vocabulary_size  # 7 characters, padding and unknown.
    9
    >>> vocabulary.encode("be!").tolist()
    [3, 4, 1]
    >>> vocabulary.decode([3, 4, 0, 0])
    'be'
    >>> CharacterVocabulary.from_config(vocabulary.get_config()) == vocabulary
    True
    """

    def __init__(self, characters, unknown="\N{REPLACEMENT CHARACTER}"):
        if isinstance(characters, str):
            characters = list(characters)
        else:
            try:
                characters = list(characters)
            except TypeError:
                raise ValueError(
                    "`characters` must be a string or an iterable of one-character "
                    f"strings. Received: characters={characters!r}."
                ) from None
        bad = [c for c in characters if not (isinstance(c, str) and len(c) == 1)]
        if bad:
            raise ValueError(
                "`characters` must hold one-character strings only. Received: "
                f"{bad[:5]!r} in characters. Pass a string such as "
                "CharacterVocabulary.from_text(text).characters."
            )
        if not characters:
            raise ValueError(
                "`characters` is empty. Received: characters=''. Build the "
                "vocabulary from text with CharacterVocabulary.from_text(text)."
            )
        if len(set(characters)) != len(characters):
            repeated = sorted({c for c in characters if characters.count(c) > 1})
            raise ValueError(
                f"`characters` repeats {repeated!r}: each character needs one id. "
                "Pass each character once."
            )
        if not isinstance(unknown, str):
            raise ValueError(
                f"`unknown` must be a string. Received: unknown={unknown!r}."
            )
        self._characters = "".join(characters)
        self._unknown = unknown
        codes = np.array([ord(c) for c in characters], dtype=np.int64)
        order = np.argsort(codes)
        self._sorted_codes = codes[order]
        self._sorted_ids = (order + 2).astype(np.int32)
        self._table = np.array(["", unknown] + characters, dtype=object)

    @classmethod
    def from_text(cls, text, unknown="\N{REPLACEMENT CHARACTER}"):
        """Builds the vocabulary of every character in `text`, sorted.

        Args:
            text: A string, or a list of strings (e.g. the training plays).
            unknown: What an out-of-vocabulary id decodes to.

        Returns:
            A `CharacterVocabulary`.

        Raises:
            ValueError: if `text` is empty or not strings.

        Example:

        >>> CharacterVocabulary.from_text(["ba", "ab!"]).characters
        '!ab'
        """
        texts = [text] if isinstance(text, str) else text
        try:
            texts = list(texts)
        except TypeError:
            texts = [text]
        if not all(isinstance(t, str) for t in texts):
            raise ValueError(
                "`text` must be a string or a list of strings. Received: "
                f"text of type {type(text).__name__}."
            )
        characters = sorted(set().union(*map(set, texts)))
        if not characters:
            raise ValueError(
                "`text` is empty: there are no characters to build a vocabulary "
                "from. Received: text=''. Pass the training text."
            )
        return cls(characters, unknown=unknown)

    @property
    def characters(self):
        """The characters, in id order (id 2 first)."""
        return self._characters

    @property
    def unknown(self):
        """What `OOV_ID` decodes to."""
        return self._unknown

    @property
    def vocabulary_size(self):
        """Number of ids: the characters plus padding and unknown."""
        return len(self._characters) + 2

    def __len__(self):
        return self.vocabulary_size

    def __eq__(self, other):
        if not isinstance(other, CharacterVocabulary):
            return NotImplemented
        return self.get_config() == other.get_config()

    def __hash__(self):
        return hash((self._characters, self._unknown))

    def __repr__(self):
        return (
            f"CharacterVocabulary(vocabulary_size={self.vocabulary_size}, "
            f"characters={self._characters!r})"
        )

    def encode(self, text):
        """Token ids of each character of `text`.

        Args:
            text: A string.

        Returns:
            An int32 NumPy array of shape `(len(text),)`; characters outside
            the vocabulary get `OOV_ID`.

        Raises:
            ValueError: if `text` is not a string.

        Example:

        >>> CharacterVocabulary("ab").encode("abc").tolist()
        [2, 3, 1]
        """
        if not isinstance(text, str):
            raise ValueError(
                f"`text` must be a string. Received: text of type {type(text).__name__}. "
                "Encode each string separately."
            )
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        where = np.searchsorted(self._sorted_codes, codes)
        where = np.minimum(where, len(self._sorted_codes) - 1)
        known = self._sorted_codes[where] == codes
        return np.where(known, self._sorted_ids[where], OOV_ID).astype(np.int32)

    def decode(self, token_ids):
        """The text of token ids; padding decodes to nothing.

        Args:
            token_ids: Integer ids, shape `(length,)` or `(batch, length)`
                (a list, NumPy array or tensor).

        Returns:
            A string, or a list of strings for a batch.

        Raises:
            ValueError: if the ids are not integers of rank 1 or 2 or fall
                outside `[0, vocabulary_size)`.

        Example:

        >>> CharacterVocabulary("ab").decode([[2, 3, 0], [1, 2, 0]])
        ['ab', '�a']
        """
        ids = np.asarray(token_ids)
        if ids.size == 0 and ids.dtype.kind not in "iu":
            ids = ids.astype(np.int64)
        if ids.dtype.kind not in "iu" or ids.ndim not in (1, 2):
            raise ValueError(
                "`token_ids` must be integers of shape (length,) or (batch, length). "
                f"Received: token_ids of dtype {ids.dtype} and shape {ids.shape}."
            )
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocabulary_size):
            raise ValueError(
                f"`token_ids` must lie in [0, {self.vocabulary_size}) for this "
                f"vocabulary. Received: ids from {ids.min()} to {ids.max()}. "
                "Decode with the vocabulary that encoded them."
            )
        if ids.ndim == 1:
            return "".join(self._table[ids])
        return ["".join(row) for row in self._table[ids]]

    def get_config(self):
        """The vocabulary as a JSON-serialisable dict (see `from_config`)."""
        return {"characters": self._characters, "unknown": self._unknown}

    @classmethod
    def from_config(cls, config):
        """Rebuilds a vocabulary from `get_config()`.

        Args:
            config: The dict `get_config()` returned.

        Returns:
            A `CharacterVocabulary` equal to the one saved.
        """
        return cls(**config)


def _positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(
            f"`{name}` must be a positive integer. Received: {name}={value!r}."
        )
    return int(value)


def causal_lm_dataset(
    token_ids,
    sequence_length,
    batch_size,
    shuffle=False,
    seed=None,
    drop_remainder=True,
):
    """Causal language-model batches, as KerasHub's `CausalLMPreprocessor`
    makes them.

    The ids are cut into non-overlapping windows of `sequence_length + 1`
    tokens; the last, shorter window is padded with `PAD_ID` and a False
    `padding_mask`. Each batch of windows `ids`, `mask` gives
    `x = {"token_ids": ids[:, :-1], "padding_mask": mask[:, :-1]}`,
    `y = ids[:, 1:]` and `sample_weight = mask[:, 1:]` (int32, bool, int32,
    bool), so that padded positions carry no loss.

    Args:
        token_ids: Encoded text, integer ids of shape `(num_tokens,)`.
        sequence_length: Model input length (each window holds one more
            token, the last target).
        batch_size: Windows per batch.
        shuffle: Whether to shuffle the windows each epoch.
        seed: Integer seed of the shuffle: epoch k's order depends only on
            `(seed, k)` (stateless ops; the k-th iteration over the dataset
            is epoch k). `None` draws a seed at random.
        drop_remainder: Whether to drop the last incomplete batch.

    Returns:
        A finite `tf.data.Dataset` of `(x, y, sample_weight)` batches, one
        epoch per iteration.

    Raises:
        ValueError: if `token_ids` is not a non-empty 1-D array of
            non-negative integers, a size is not a positive integer, `seed`
            is not an integer, or `drop_remainder=True` leaves no batch.

    Example:

    >>> dataset = causal_lm_dataset(np.arange(2, 12), sequence_length=3,
    ...                             batch_size=3, drop_remainder=False)
    >>> x, y, sample_weight = next(iter(dataset))
    >>> x["token_ids"].numpy().tolist()
    [[2, 3, 4], [6, 7, 8], [10, 11, 0]]
    >>> y.numpy().tolist()
    [[3, 4, 5], [7, 8, 9], [11, 0, 0]]
    >>> sample_weight.numpy().astype(int).tolist()
    [[1, 1, 1], [1, 1, 1], [1, 0, 0]]
    """
    sequence_length = _positive_int(sequence_length, "sequence_length")
    batch_size = _positive_int(batch_size, "batch_size")
    ids = np.asarray(token_ids)
    if ids.ndim != 1 or ids.size == 0 or ids.dtype.kind not in "iu":
        raise ValueError(
            "`token_ids` must be a non-empty 1-D array of integer ids (e.g. "
            "CharacterVocabulary.encode(text)). Received: token_ids of dtype "
            f"{ids.dtype} and shape {ids.shape}."
        )
    if ids.min() < 0 or ids.max() > np.iinfo(np.int32).max:
        raise ValueError(
            "`token_ids` must be non-negative int32 ids. Received: ids from "
            f"{ids.min()} to {ids.max()}."
        )
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % (2**31))
    elif isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"`seed` must be an integer or None. Received: seed={seed!r}.")
    window = sequence_length + 1
    num_windows = -(-ids.size // window)
    padded = np.full(num_windows * window, PAD_ID, dtype=np.int32)
    padded[: ids.size] = ids
    mask = np.zeros(num_windows * window, dtype=bool)
    mask[: ids.size] = True
    padded = padded.reshape(num_windows, window)
    mask = mask.reshape(num_windows, window)
    if drop_remainder:
        num_batches = num_windows // batch_size
    else:
        num_batches = -(-num_windows // batch_size)
    if num_batches == 0:
        raise ValueError(
            f"{ids.size} tokens make {num_windows} window(s) of sequence_length + 1 = "
            f"{window} tokens, fewer than batch_size={batch_size}: with "
            "drop_remainder=True there is no batch. Pass more text, a smaller "
            "`batch_size` or `sequence_length`, or drop_remainder=False."
        )
    windows = tf.constant(padded)
    masks = tf.constant(mask)

    def to_example(index):
        ids_batch = tf.gather(windows, index)
        mask_batch = tf.gather(masks, index)
        x = {"token_ids": ids_batch[:, :-1], "padding_mask": mask_batch[:, :-1]}
        return x, ids_batch[:, 1:], mask_batch[:, 1:]

    def one_epoch(epoch):
        if shuffle:
            epoch_seed = tf.stack([tf.constant(seed, tf.int64), epoch])
            order = tf.argsort(tf.random.stateless_uniform([num_windows], epoch_seed))
        else:
            order = tf.range(num_windows)
        indices = tf.data.Dataset.from_tensor_slices(tf.cast(order, tf.int64))
        return indices.batch(batch_size, drop_remainder=drop_remainder).map(to_example)

    if not shuffle:
        dataset = one_epoch(tf.constant(0, tf.int64))
    else:
        # The epoch count lives in a variable, as Dataset.shuffle keeps its
        # reshuffling state between iterations.
        iterations = tf.Variable(-1, dtype=tf.int64, trainable=False)
        epoch = tf.data.Dataset.range(1).map(lambda _: iterations.assign_add(1))
        dataset = epoch.flat_map(one_epoch)
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(num_batches))
    return dataset.prefetch(tf.data.AUTOTUNE)


def _model_inputs(model, x):
    """`x` for a model of dict inputs; its token ids for a one-input model."""
    if isinstance(x, dict):
        try:
            inputs = model.inputs
        except (AttributeError, ValueError):
            inputs = None
        if isinstance(inputs, (list, tuple)) and len(inputs) == 1:
            return x["token_ids"]
    return x


def language_model_metrics(model, dataset, num_characters=None):
    """Cross-entropy of a language model on a dataset, from its logits.

    Sums the cross-entropy (nats) of every real target token, weighted by
    the dataset's `sample_weight` (padding weighs 0): the model's logits are
    cast to float64 before the log-softmax, and the sums are float64.

    Args:
        model: A Keras model mapping inputs to logits of shape
            `(batch, length, vocabulary_size)`. It is given the dataset's `x`
            as it is (e.g. `GPT2CausalLM`, whose inputs are `token_ids` and
            `padding_mask`), or `x["token_ids"]` if it has a single input
            (e.g. `Sequential([Input((None,)), Embedding, ...])`).
        dataset: A `tf.data.Dataset` of `(x, y)` or `(x, y, sample_weight)`
            batches, e.g. from `causal_lm_dataset`.
        num_characters: Number of characters of the text the dataset's real
            tokens encode, for a word-piece model; `None` (default) for a
            character model (one character per token).

    Returns:
        A dict: `tokens` (total weight), `nats` (summed cross-entropy),
        `nats_per_token`, `perplexity` (`exp(nats_per_token)`),
        `bits_per_token` and `bits_per_character`
        (`nats / ln 2 / characters`), Python floats.

    Raises:
        ValueError: if the dataset has no weighted token, an element is not
            `(x, y[, sample_weight])`, the logits are not of rank 3, or
            `num_characters` is not a positive integer.

    Example:

    >>> import keras
    >>> uniform = keras.Sequential([
    ...     keras.Input((None,), dtype="int32"),
    ...     keras.layers.Embedding(8, 4),
    ...     keras.layers.Dense(8, kernel_initializer="zeros"),
    ... ])
    >>> dataset = causal_lm_dataset(np.arange(2, 8), 2, 2, drop_remainder=False)
    >>> metrics = language_model_metrics(uniform, dataset)
    >>> metrics["tokens"], round(metrics["perplexity"], 6), round(metrics["bits_per_token"], 6)
    (4.0, 8.0, 3.0)
    """
    if num_characters is not None:
        num_characters = _positive_int(num_characters, "num_characters")

    @tf.function(reduce_retracing=True)
    def batch_sums(inputs, y, weight):
        logits = model(inputs, training=False)
        if logits.shape.rank != 3:
            raise ValueError(
                "The model must return logits of shape (batch, length, "
                f"vocabulary_size). Received: logits of shape {logits.shape}."
            )
        # Log-softmax in float64 too: exact to ~1e-15 for any vocabulary.
        cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=tf.cast(y, tf.int32), logits=tf.cast(logits, tf.float64)
        )
        weight = tf.cast(weight, tf.float64)
        return tf.reduce_sum(cross_entropy * weight), tf.reduce_sum(weight)

    if keras.backend.backend() != "tensorflow":
        # tf.function cannot trace a JAX (or torch) model: its compiled
        # predict step gives the logits, NumPy the float64 cross-entropy.
        def batch_sums(inputs, y, weight):  # noqa: F811
            inputs = keras.tree.map_structure(np.asarray, inputs)
            logits = model(inputs, training=False)
            if keras.ops.ndim(logits) != 3:
                raise ValueError(
                    "The model must return logits of shape (batch, length, "
                    f"vocabulary_size). Received: logits of shape {keras.ops.shape(logits)}."
                )
            logits = np.asarray(keras.ops.convert_to_numpy(logits), dtype=np.float64)
            top = logits.max(axis=-1, keepdims=True)
            log_normalizer = np.log(np.exp(logits - top).sum(axis=-1)) + top[..., 0]
            labels = np.asarray(y).astype(np.int64)
            picked = np.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
            weight = np.asarray(weight, dtype=np.float64)
            return np.sum((log_normalizer - picked) * weight), np.sum(weight)

    nats = 0.0
    tokens = 0.0
    for element in dataset:
        if not isinstance(element, tuple) or len(element) not in (2, 3):
            raise ValueError(
                "`dataset` must yield (x, y) or (x, y, sample_weight) batches, as "
                f"causal_lm_dataset does. Received: an element of type {type(element).__name__}"
                + (f" with {len(element)} parts." if isinstance(element, tuple) else ".")
            )
        x, y = element[0], element[1]
        weight = element[2] if len(element) == 3 else tf.ones_like(y, dtype=tf.float64)
        batch_nats, batch_tokens = batch_sums(_model_inputs(model, x), y, weight)
        nats += float(batch_nats)
        tokens += float(batch_tokens)
    if tokens <= 0:
        raise ValueError(
            "`dataset` has no weighted target token (empty, or all sample_weight 0): "
            "there is nothing to evaluate. Pass a dataset of encoded text."
        )
    characters = tokens if num_characters is None else float(num_characters)
    nats_per_token = nats / tokens
    return {
        "tokens": tokens,
        "nats": nats,
        "nats_per_token": nats_per_token,
        "perplexity": math.exp(nats_per_token),
        "bits_per_token": nats_per_token / math.log(2),
        "bits_per_character": nats / math.log(2) / characters,
    }


def bits_per_character(model, dataset, num_characters=None):
    """Bits per character of a language model on a dataset.

    For a character model: the mean cross-entropy of the real (unpadded)
    target tokens in nats, divided by ln 2. For a word-piece model pass
    `num_characters`: total nats / ln 2 / characters. See
    `language_model_metrics` for the arguments and errors.

    Args:
        model: A Keras model that maps inputs to logits.
        dataset: `(x, y[, sample_weight])` batches, e.g. `causal_lm_dataset`.
        num_characters: Characters of the evaluated text; `None` for one
            character per token.

    Returns:
        Bits per character, a Python float (a uniform model over `V` ids
        gives `log2(V)`).

    Example:

    >>> import keras
    >>> uniform = keras.Sequential([
    ...     keras.Input((None,), dtype="int32"),
    ...     keras.layers.Embedding(4, 3),
    ...     keras.layers.Dense(4, kernel_initializer="zeros"),
    ... ])
    >>> vocabulary = CharacterVocabulary("ab")
    >>> dataset = causal_lm_dataset(vocabulary.encode("abba" * 5), 4, 2)
    >>> round(bits_per_character(uniform, dataset), 6)
    2.0
    """
    return language_model_metrics(model, dataset, num_characters)["bits_per_character"]
