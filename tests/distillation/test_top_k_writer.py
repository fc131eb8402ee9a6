"""The top-k writer's chunked mode: `write_top_k_cache(chunk_size=...)`.

The chunked writer runs the teacher to its final hidden states and takes the
top k of the head's logits `chunk_size` positions at a time; its cache must
be the dense writer's (the same ids where values are not tied, values and
log-normalisers within float32 rounding, the same manifest), for KerasHub
causal LMs (tied, untied, soft-capped heads) and Keras Sequential models.
"""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import numpy

import keras_kd
from keras_kd.distillation import top_k
from keras_kd.distillation.cache import CacheError
from keras_kd.distillation.chunked import LinearHead
from keras_kd.distillation.top_k_writer import chunked_top_k

VOCAB = 50
TIME = 6
HIDDEN = 8


# --- float64 NumPy reference -------------------------------------------------


def _reference(hidden, kernel, bias, soft_cap, k, temperature):
    """`(indices, values, log_normalizer, gap)` in float64; `gap` is the
    distance between the k-th and (k+1)-th logit (ids are only defined
    where it is not a tie)."""
    logits = np.float64(hidden) @ np.float64(kernel)
    if bias is not None:
        logits = logits + np.float64(bias)
    if soft_cap is not None:
        logits = soft_cap * np.tanh(logits / soft_cap)
    order = np.argsort(-logits, axis=-1, kind="stable")
    indices = order[..., :k]
    values = np.take_along_axis(logits, indices, -1)
    scaled = logits / temperature
    top = scaled.max(-1, keepdims=True)
    log_normalizer = (top[..., 0] + np.log(np.exp(scaled - top).sum(-1)))
    ranked = np.take_along_axis(logits, order, -1)
    gaps = -np.diff(ranked[..., : k + 1], axis=-1)  # Between neighbours up to k+1.
    return indices, values, log_normalizer, gaps.min(-1)


def _assert_top_k_equal(got, expected, gap, values_tolerance=1e-5):
    """Ids equal where no two of the top k + 1 logits are within float32
    rounding of each other; values and log-normalisers within float32
    tolerance everywhere."""
    indices, values, log_normalizer = (np.asarray(a) for a in got)
    untied = gap > 1e-5
    assert untied.mean() > 0.8  # The comparison is not vacuous.
    np.testing.assert_array_equal(indices[untied], np.asarray(expected[0])[untied])
    np.testing.assert_allclose(values, expected[1], rtol=values_tolerance, atol=values_tolerance)
    np.testing.assert_allclose(log_normalizer, expected[2], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk_size", [1, 4, 21, 100])
@pytest.mark.parametrize("head_kind", ["dense", "tied", "soft_cap"])
def test_chunked_top_k_matches_the_float64_reference(chunk_size, head_kind):
    rng = np.random.default_rng(3)
    hidden = rng.normal(size=(3, 7, HIDDEN)).astype("float32")  # 21 positions.
    kernel = rng.normal(size=(HIDDEN, VOCAB)).astype("float32")
    bias = rng.normal(size=(VOCAB,)).astype("float32") if head_kind == "dense" else None
    soft_cap = 2.5 if head_kind == "soft_cap" else None
    if head_kind == "dense":
        head = LinearHead(kernel, bias)
    else:  # A tied embedding: `(vocab, hidden)`, used transposed.
        head = LinearHead(kernel.T.copy(), transposed=True, soft_cap=soft_cap)
    k, temperature = 5, 2.0
    got = numpy(chunked_top_k(hidden, head, k, temperature, chunk_size))
    assert [a.shape for a in got] == [(3, 7, k), (3, 7, k), (3, 7)]
    assert str(got[0].dtype) == "int32" and str(got[1].dtype) == "float32"
    *expected, gap = _reference(hidden, kernel, bias, soft_cap, k, temperature)
    _assert_top_k_equal(got, expected, gap)
    # And the dense op on whole logits gives the same.
    logits = np.float64(hidden) @ np.float64(kernel) + (0.0 if bias is None else bias)
    if soft_cap is not None:
        logits = soft_cap * np.tanh(logits / soft_cap)
    dense = numpy(top_k.top_k_logits(logits.astype("float32"), k, temperature))
    _assert_top_k_equal(got, dense, gap)


def test_chunked_top_k_compiles_with_an_unknown_batch_size():
    if keras.backend.backend() != "tensorflow":
        pytest.skip("TensorFlow traces unknown batch sizes; jax.jit traces each shape")
    rng = np.random.default_rng(4)
    kernel = rng.normal(size=(HIDDEN, VOCAB)).astype("float32")
    head = LinearHead(kernel)
    compiled = tf.function(
        lambda h: chunked_top_k(h, head, 3, 1.0, chunk_size=4),
        input_signature=[tf.TensorSpec((None, None, HIDDEN), tf.float32)],
    )
    for shape in ((2, 5), (1, 3), (3, 4)):  # 10, 3 and 12 positions: padded or not.
        hidden = rng.normal(size=shape + (HIDDEN,)).astype("float32")
        *expected, gap = _reference(hidden, kernel, None, None, 3, 1.0)
        _assert_top_k_equal(numpy(compiled(hidden)), expected, gap)


def _intermediate_shapes(fn, *arguments):
    """Every intermediate array shape of `fn` compiled, loop bodies included."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        shapes = []

        def walk(jaxpr):
            for equation in jaxpr.eqns:
                shapes.extend(tuple(v.aval.shape) for v in equation.outvars)
                for parameter in equation.params.values():
                    for inner in parameter if isinstance(parameter, (list, tuple)) else [parameter]:
                        inner = getattr(inner, "jaxpr", inner)
                        if hasattr(inner, "eqns"):
                            walk(inner)

        walk(jax.make_jaxpr(fn)(*arguments).jaxpr)
        return shapes
    if backend != "tensorflow":
        pytest.skip(f"no graph to inspect on {backend}")
    concrete = tf.function(fn).get_concrete_function(*arguments)
    shapes, graphs, seen = [], [concrete.graph], set()
    while graphs:  # The graph and its loops' bodies (`_functions`).
        graph = graphs.pop()
        for operation in graph.get_operations():
            shapes.extend(tuple(t.shape.as_list()) for t in operation.outputs if t.shape.rank)
        for name, function in graph._functions.items():
            if name not in seen:
                seen.add(name)
                graphs.append(function.graph)
    return shapes


def test_only_one_chunk_of_logits_exists():
    # 4 x 6 = 24 positions at chunk_size 4: a (24, V) or (4, 6, V) tensor
    # would be the whole batch's logits; (4, V) chunks are all there is.
    vocab = 97  # No other axis of this test has this size.
    rng = np.random.default_rng(5)
    head = LinearHead(rng.normal(size=(HIDDEN, vocab)).astype("float32"))
    hidden = rng.normal(size=(4, TIME, HIDDEN)).astype("float32")
    shapes = _intermediate_shapes(lambda h: chunked_top_k(h, head, 3, 1.0, chunk_size=4), hidden)
    with_vocab = {s for s in shapes if vocab in s and s != (HIDDEN, vocab)}
    assert with_vocab, shapes  # The chunks' logits were seen...
    assert with_vocab <= {(4, vocab)}, with_vocab  # ...and nothing larger.


# --- The writer: chunked equals dense -----------------------------------------


def _sequential(seed=20):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((TIME,), dtype="int32"),
        keras.layers.Embedding(VOCAB, HIDDEN),
        keras.layers.Dense(HIDDEN, activation="tanh", name="mix"),
        keras.layers.Dense(VOCAB, name="lm_head",
                           kernel_initializer=keras.initializers.RandomNormal(stddev=1.0)),
    ])


def _hub(kind, seed=2):
    keras_hub = pytest.importorskip("keras_hub")
    keras.utils.set_random_seed(seed)
    width = 16
    if kind == "gpt2":  # Tied embeddings.
        backbone = keras_hub.models.GPT2Backbone(
            vocabulary_size=VOCAB, num_layers=1, num_heads=2, hidden_dim=width,
            intermediate_dim=2 * width, max_sequence_length=TIME)
        return keras_hub.models.GPT2CausalLM(backbone=backbone)
    if kind == "llama":  # An untied output embedding.
        backbone = keras_hub.models.LlamaBackbone(
            vocabulary_size=VOCAB, num_layers=1, num_query_heads=2, num_key_value_heads=1,
            hidden_dim=width, intermediate_dim=2 * width, tie_word_embeddings=False)
        return keras_hub.models.LlamaCausalLM(backbone=backbone)
    # Gemma 2 style: tied, with the final logit soft-cap.
    backbone = keras_hub.models.GemmaBackbone(
        vocabulary_size=VOCAB, num_layers=1, num_query_heads=2, num_key_value_heads=1,
        hidden_dim=width, intermediate_dim=2 * width, head_dim=width // 2,
        final_logit_soft_cap=1.5, attention_logit_soft_cap=50.0, use_post_ffw_norm=True,
        use_post_attention_norm=True, query_head_dim_normalize=True)
    return keras_hub.models.GemmaCausalLM(backbone=backbone)


@pytest.fixture(scope="module")
def tokens():
    return np.random.default_rng(0).integers(0, VOCAB, size=(20, TIME)).astype("int32")


def _hub_inputs(tokens):
    mask = np.ones(tokens.shape, bool)
    mask[::3, -2:] = False  # Some padding.
    return {"token_ids": tokens, "padding_mask": mask}


def _stored(cache):
    shards = [cache.shard(n) for n in range(cache.num_shards)]
    return {key: np.concatenate([s[key] for s in shards]) for key in top_k.TOP_K_KEYS}


def _same_manifest(dense, chunked):
    """The manifests agree but for the shards' checksums (float32 rounding
    of the blocked matmul may change a value's last bit)."""
    strip = lambda m: {**m, "shards": [  # noqa: E731
        {**s, "files": {k: {**f, "sha256": None} for k, f in s["files"].items()}}
        for s in m["shards"]]}
    assert strip(dense.manifest) == strip(chunked.manifest)


def _unsorted_gap(teacher_logits, k):
    ranked = -np.sort(-np.float64(teacher_logits), axis=-1)
    return (-np.diff(ranked[..., : k + 1], axis=-1)).min(-1)


@pytest.mark.parametrize("kind,chunk_size", [
    ("sequential", 5), ("sequential", 1024), ("gpt2", 5), ("llama", 7), ("gemma", 1024)])
def test_the_chunked_cache_is_the_dense_cache(kind, chunk_size, tokens, tmp_path):
    teacher = _sequential() if kind == "sequential" else _hub(kind)
    inputs = tokens if kind == "sequential" else _hub_inputs(tokens)
    k, temperature = 7, 2.0
    settings = dict(k=k, temperature=temperature, batch_size=8, shard_tokens=3 * TIME,
                    values_dtype="float32", center_values=False)
    dense = top_k.write_top_k_cache(teacher, inputs, tmp_path / "dense", **settings)
    chunked = top_k.write_top_k_cache(teacher, inputs, tmp_path / "chunked", **settings,
                                      chunk_size=chunk_size)
    _same_manifest(dense, chunked)
    assert chunked.manifest["vocab_size"] == VOCAB and "chunk_size" not in chunked.manifest
    logits = numpy(teacher(inputs, training=False))
    expected = _stored(dense)
    _assert_top_k_equal(
        [_stored(chunked)[key] for key in top_k.TOP_K_KEYS],
        [expected[key] for key in top_k.TOP_K_KEYS], _unsorted_gap(logits, k))
    # Both are the teacher's own top k (float64 reference on its logits).
    indices, values, log_normalizer = numpy(top_k.top_k_logits(logits, k, temperature))
    np.testing.assert_allclose(_stored(chunked)["log_normalizer"], log_normalizer,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_stored(chunked)["values"], values, rtol=1e-5, atol=1e-5)


def test_centred_float16_values_match_the_dense_writer(tokens, tmp_path):
    teacher = _hub("gemma")
    inputs = _hub_inputs(tokens)
    dense = _stored(top_k.write_top_k_cache(teacher, inputs, tmp_path / "d", 6, batch_size=8))
    chunked = _stored(top_k.write_top_k_cache(
        teacher, inputs, tmp_path / "c", 6, batch_size=8, chunk_size=7))
    gap = _unsorted_gap(numpy(teacher(inputs, training=False)), 6) > 1e-5
    np.testing.assert_array_equal(chunked["indices"][gap], dense["indices"][gap])
    assert chunked["values"].dtype == np.float16
    np.testing.assert_allclose(chunked["values"].astype("float32"), dense["values"].astype("float32"),
                               atol=2e-3)
    np.testing.assert_allclose(chunked["log_normalizer"], dense["log_normalizer"], atol=1e-5)


@pytest.mark.parametrize("first", ["dense", "chunked"])
def test_a_cache_written_one_way_is_reused_the_other_way(first, tokens, tmp_path):
    # chunk_size does not change what the cache holds, so it is not part of
    # the manifest's settings: the same teacher's cache is kept either way.
    teacher = _sequential()
    path = tmp_path / "cache"
    ways = {"dense": {}, "chunked": {"chunk_size": 4}}
    second = "chunked" if first == "dense" else "dense"
    top_k.write_top_k_cache(teacher, tokens, path, 4, batch_size=8, **ways[first])
    mtime = os.path.getmtime(path / "manifest.json")
    kept = top_k.write_top_k_cache(teacher, tokens, path, 4, batch_size=5, **ways[second])
    assert os.path.getmtime(path / "manifest.json") == mtime
    assert kept.manifest == json.loads((path / "manifest.json").read_text())
    top_k.read_top_k_cache(path, teacher=teacher, inputs_fingerprint=top_k.fingerprint_inputs(tokens))
    with pytest.raises(CacheError, match="other settings"):
        top_k.write_top_k_cache(teacher, tokens, path, 5, batch_size=8, **ways[second])
    changed = _sequential(seed=21)
    with pytest.raises(CacheError, match="another teacher"):
        top_k.write_top_k_cache(changed, tokens, path, 4, batch_size=8, **ways[second])


def test_the_writer_reads_the_current_head_weights(tokens, tmp_path):
    teacher = _sequential()
    first = _stored(top_k.write_top_k_cache(teacher, tokens, tmp_path / "a", 3, chunk_size=4))
    head = teacher.get_layer("lm_head")
    kernel, bias = head.get_weights()
    head.set_weights([kernel[:, ::-1].copy(), bias[::-1].copy()])  # Reversed ids.
    second = top_k.write_top_k_cache(teacher, tokens, tmp_path / "b", 3, chunk_size=4)
    np.testing.assert_array_equal(_stored(second)["indices"], VOCAB - 1 - first["indices"])


def test_a_named_head_of_a_functional_model(tokens, tmp_path):
    inputs = keras.Input((TIME,), dtype="int32")
    hidden = keras.layers.Embedding(VOCAB, HIDDEN)(inputs)
    hidden = keras.layers.LayerNormalization()(hidden)
    logits = keras.layers.Dense(VOCAB, name="vocab_projection")(hidden)
    teacher = keras.Model(inputs, logits)
    settings = dict(k=4, batch_size=8, values_dtype="float32", center_values=False)
    dense = _stored(top_k.write_top_k_cache(teacher, tokens, tmp_path / "d", **settings))
    chunked = _stored(top_k.write_top_k_cache(
        teacher, tokens, tmp_path / "c", **settings, chunk_size=6, teacher_head="vocab_projection"))
    np.testing.assert_allclose(chunked["values"], dense["values"], atol=1e-5)
    np.testing.assert_allclose(chunked["log_normalizer"], dense["log_normalizer"], atol=1e-5)


# --- Bad arguments ----------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [0, -3, 1.5, True, "8"])
def test_a_bad_chunk_size_is_refused(chunk_size, tokens, tmp_path):
    with pytest.raises(ValueError, match=r"`chunk_size` must be a positive integer.*Received: "
                                         r"chunk_size="):
        top_k.write_top_k_cache(_sequential(), tokens, tmp_path / "c", 4, chunk_size=chunk_size)
    assert not os.listdir(tmp_path)


def test_a_head_that_cannot_be_found_is_refused(tokens, tmp_path):
    teacher = _sequential()
    with pytest.raises(ValueError, match=r"teacher_head='nope'.*names no layer.*write without "
                                         r"`chunk_size`"):
        top_k.write_top_k_cache(teacher, tokens, tmp_path / "c", 4, chunk_size=4, teacher_head="nope")
    with pytest.raises(ValueError, match=r"`teacher_head`: The head 'mix' has an activation"):
        top_k.write_top_k_cache(teacher, tokens, tmp_path / "c", 4, chunk_size=4, teacher_head="mix")
    inputs = keras.Input((TIME,), dtype="int32")
    first = keras.layers.Dense(VOCAB, name="first")(keras.layers.Embedding(VOCAB, HIDDEN)(inputs))
    two_heads = keras.Model(inputs, keras.layers.Dense(VOCAB, name="second")(first))
    with pytest.raises(ValueError, match=r"'first' does not compute .*output.*teacher_head="):
        top_k.write_top_k_cache(two_heads, tokens, tmp_path / "c", 4, chunk_size=4,
                                teacher_head="first")
    with pytest.raises(ValueError, match=r"`teacher_head` must be the name of a layer"):
        top_k.write_top_k_cache(teacher, tokens, tmp_path / "c", 4, chunk_size=4, teacher_head=3)
    assert not os.listdir(tmp_path)


def test_a_teacher_without_a_linear_head_is_refused(tokens, tmp_path):
    keras.utils.set_random_seed(0)
    softmax_teacher = keras.Sequential([
        keras.Input((TIME,), dtype="int32"),
        keras.layers.Embedding(VOCAB, HIDDEN),
        keras.layers.Dense(VOCAB, activation="softmax"),
    ])
    with pytest.raises(ValueError, match=r"chunk_size=4.*probabilities.*write without `chunk_size`"):
        top_k.write_top_k_cache(softmax_teacher, tokens, tmp_path / "c", 4, chunk_size=4)
    pooled = keras.Sequential([
        keras.Input((TIME,), dtype="int32"),
        keras.layers.Embedding(VOCAB, HIDDEN),
        keras.layers.Dense(VOCAB),
        keras.layers.Activation("linear"),
    ])
    with pytest.raises(ValueError, match=r"cannot identify the head.*teacher_head="):
        top_k.write_top_k_cache(pooled, tokens, tmp_path / "c", 4, chunk_size=4)


def test_other_arguments_that_do_not_go_with_chunk_size(tokens, tmp_path):
    teacher = _sequential()
    with pytest.raises(ValueError, match=r"`teacher_head`.*needs `chunk_size`.*Received: "
                                         r"teacher_head='lm_head'"):
        top_k.write_top_k_cache(teacher, tokens, tmp_path / "c", 4, teacher_head="lm_head")
    with pytest.raises(ValueError, match=r"`output` must be None.*Received: output=0"):
        top_k.write_top_k_cache(teacher, tokens, tmp_path / "c", 4, chunk_size=4, output=0)
    with pytest.raises(ValueError, match=r"`k` must be at most the vocabulary size 50"):
        top_k.write_top_k_cache(teacher, tokens, tmp_path / "c", 51, chunk_size=4)
    assert not os.listdir(tmp_path)


# --- A Distiller trains the same from either cache ---------------------------


def _student(seed=3):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((TIME,), dtype="int32"),
        keras.layers.Embedding(VOCAB, 4),
        keras.layers.Dense(VOCAB),
    ])


@pytest.mark.skipif(keras.backend.backend() == "torch",
                    reason="the top-k cache loss runs on TensorFlow and JAX")
def test_a_distiller_trains_the_same_from_the_chunked_cache(tokens, tmp_path):
    teacher = _sequential()
    labels = np.roll(tokens, -1, axis=1)
    histories, weights = {}, {}
    for name, chunk_size in (("dense", None), ("chunked", 5)):
        cache = top_k.write_top_k_cache(
            teacher, tokens, tmp_path / name, 6, temperature=2.0, batch_size=8,
            values_dtype="float32", chunk_size=chunk_size)
        batches = tf.data.Dataset.zip(
            tf.data.Dataset.from_tensor_slices((tokens, labels)).batch(5),
            top_k.top_k_dataset(cache, batch_size=5),
        ).map(lambda xy, t: (xy[0], keras_kd.targets(xy[1], teacher_top_k=t)))
        distiller = keras_kd.Distiller(student=_student(), teacher=teacher)
        distiller.compile(optimizer=keras.optimizers.SGD(0.5), alpha=0.5, temperature=2.0)
        # Two fits of one epoch, not one of two: on JAX a second epoch's
        # first-batch check reads variable values the first epoch's steps
        # donated (a Distiller issue of its own, not the cache's).
        histories[name] = {key: [] for key in ("loss", "distillation_loss")}
        for _ in range(2):
            history = distiller.fit(batches, epochs=1, verbose=0).history
            for key in histories[name]:
                histories[name][key] += history[key]
        weights[name] = distiller.student.get_weights()
    assert float(histories["dense"]["distillation_loss"][0]) > 0.0
    for key in ("loss", "distillation_loss"):
        np.testing.assert_allclose(histories["chunked"][key], histories["dense"][key], rtol=1e-5)
    for dense, chunked in zip(weights["dense"], weights["chunked"]):
        np.testing.assert_allclose(chunked, dense, rtol=1e-5, atol=1e-6)
