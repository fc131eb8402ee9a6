"""Top-k teacher-logit caches for sequence models (language models).

A language-model teacher gives logits of shape `(batch, time, vocab)`; the
dense cache of `keras_kd.cache` would cost `4 * vocab` bytes per token
(201 kB for GPT-2's 50,257 tokens). This module keeps, per token, only the
teacher's `k` largest logits, their token ids and the log-normaliser
`logsumexp(logits / T)` over the full vocabulary (`bytes_per_token`: 100
bytes at `k=16`), as DistillKit's offline logits and Megatron-LM's top-k
logits distillation do.

`top_k_kl_divergence` compares such a cached teacher with a student's full
logits in one of two ways:

- `tail="bin"`: both distributions over `k + 1` bins, the `k` cached tokens
  and one bin for the rest of the vocabulary. The teacher's tail mass is
  exact, but needs the log-normaliser at the loss's temperature, so the
  cache is made at one `temperature` and only that temperature is accepted.
- `tail="renormalize"`: both distributions renormalised over the `k` cached
  tokens. Any temperature works; the mass outside the top k is ignored.

With `k = vocab` both equal the dense `T**2 * KL(softmax(t/T) ||
softmax(s/T))` of `KLDivergenceWithTemperature`.

The code lives in three modules, re-exported here: the loss
(`top_k_loss`), the writer (`top_k_writer`) and the reader with its
manifest (`top_k_reader`).

`write_top_k_cache` runs the teacher once over the inputs, batch by batch,
and writes a directory of `.npy` shards with a JSON manifest (fingerprints
of the teacher's weights and of the inputs, checksums); with `chunk_size`
it takes the top k from the teacher's hidden states a chunk of positions
at a time (`chunked_top_k`), never building a batch's full logits; `read_top_k_cache`
checks it and memory-maps the shards; `top_k_dataset` streams it as a
`tf.data.Dataset` of per-example (or per-batch) dicts to `zip` with the
inputs, read by tf.data itself.
"""

# Re-exports: `keras_kd.distillation.top_k` keeps every name it had.
from keras_kd.distillation.top_k_loss import CACHE_TEMPERATURE_KEY  # noqa: F401
from keras_kd.distillation.top_k_loss import TAILS  # noqa: F401
from keras_kd.distillation.top_k_loss import TEACHER_TOP_K_KEY  # noqa: F401
from keras_kd.distillation.top_k_loss import TOP_K_KEYS  # noqa: F401
from keras_kd.distillation.top_k_loss import VOCAB_SIZE_KEY  # noqa: F401
from keras_kd.distillation.top_k_loss import TopKKLDivergence  # noqa: F401
from keras_kd.distillation.top_k_loss import bin_temperature_message  # noqa: F401
from keras_kd.distillation.top_k_loss import carried_cache_temperature  # noqa: F401
from keras_kd.distillation.top_k_loss import check_cache_temperature  # noqa: F401
from keras_kd.distillation.top_k_loss import check_cache_vocabulary  # noqa: F401
from keras_kd.distillation.top_k_loss import top_k_kl_divergence  # noqa: F401
from keras_kd.distillation.top_k_loss import top_k_logits  # noqa: F401
from keras_kd.distillation.top_k_loss import vocabulary_message  # noqa: F401
from keras_kd.distillation.top_k_reader import MANIFEST_NAME  # noqa: F401
from keras_kd.distillation.top_k_reader import TOP_K_FORMAT  # noqa: F401
from keras_kd.distillation.top_k_reader import TOP_K_FORMAT_VERSION  # noqa: F401
from keras_kd.distillation.top_k_reader import TopKCache  # noqa: F401
from keras_kd.distillation.top_k_reader import read_top_k_cache  # noqa: F401
from keras_kd.distillation.top_k_reader import top_k_dataset  # noqa: F401
from keras_kd.distillation.top_k_writer import DEFAULT_SHARD_TOKENS  # noqa: F401
from keras_kd.distillation.top_k_writer import bytes_per_token  # noqa: F401
from keras_kd.distillation.top_k_writer import chunked_top_k  # noqa: F401
from keras_kd.distillation.top_k_writer import fingerprint_inputs  # noqa: F401
from keras_kd.distillation.top_k_writer import write_top_k_cache  # noqa: F401
