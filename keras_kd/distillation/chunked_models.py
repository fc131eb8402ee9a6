"""Where a model's final hidden states and output head are, for the
Distiller's chunked path (`Distiller.compile(chunk_size=...)`).

`model_head(model)` returns a `ModelHead`: a function of the model's inputs
giving its final hidden states, and the layer whose weights turn them into
logits (`keras_kd.distillation.chunked.LinearHead.from_layer` reads it at
every step, so the current weights are used).

Recognised:

- A KerasHub `CausalLM` (GPT-2, Llama, Gemma, ...): hidden states from
  `model.backbone`, the head `backbone.token_embedding` (a tied or untied
  `ReversibleEmbedding`, with its `logit_soft_cap`: Gemma 2's
  `final_logit_soft_cap`).
- Any Functional or Sequential Keras model with one output computed by a
  `Dense(vocab)` without activation (or a `ReversibleEmbedding`): its last
  layer, or the layer named by `head=`. The hidden states are that layer's
  input, from a sub-model.
"""

import collections

import keras

from keras_kd.distillation.chunked import LinearHead

ModelHead = collections.namedtuple("ModelHead", ["hidden", "layer"])
ModelHead.__doc__ = """A model's hidden-state function and head layer.

Attributes:
    hidden: `hidden(inputs, training)` -> `(batch, ..., hidden)` states.
    layer: The head layer (`Dense` or `ReversibleEmbedding`).
"""


def _is_causal_lm(model):
    backbone = getattr(model, "backbone", None)
    return backbone is not None and isinstance(
        getattr(backbone, "token_embedding", None), keras.layers.ReversibleEmbedding)


def model_head(model, head=None, argument="student_head"):
    """The hidden states and head of `model` for the chunked path.

    Args:
        model: A KerasHub causal LM, or a Functional / Sequential model
            whose only output is computed by a `Dense(vocab)` (no
            activation) or a `ReversibleEmbedding`.
        head: Optional name of the head layer (default: the causal LM's
            token embedding, or the model's last layer).
        argument: The `compile` argument `head` came from, for errors.

    Returns:
        A `ModelHead`.

    Raises:
        ValueError: for a model whose head cannot be identified.

    Example:

    ```python
    hidden, layer = model_head(keras_hub.models.GPT2CausalLM(backbone))
    states = hidden(batch_inputs, False)
    flat = keras.ops.reshape(states, (-1, states.shape[-1]))
    logits = LinearHead.from_layer(layer).logits(flat)  # == model(batch_inputs), flattened
    ```
    """
    if head is None and _is_causal_lm(model):
        backbone = model.backbone
        layer = backbone.token_embedding
        LinearHead.from_layer(layer)  # Refuses quantized heads now.
        return ModelHead(lambda x, training=None: backbone(x, training=training), layer)
    if head is not None and not isinstance(head, str):
        raise ValueError(
            f"`{argument}` must be the name of a layer of {model.name!r}. "
            f"Received: {argument}={head!r}.")
    fix = (f"Give the model a `Dense(vocab)` head without activation as its last "
           f"layer (or name it with `{argument}=`), or train without `chunk_size`.")
    try:
        outputs = model.outputs
    except AttributeError:
        outputs = None
    if not outputs:
        raise ValueError(
            f"The chunked path cannot find the head of {model.name!r} (a subclassed "
            f"model without a graph). {fix}")
    if len(outputs) != 1:
        raise ValueError(
            f"The chunked path needs a model with one output; {model.name!r} has "
            f"{len(outputs)}. {fix}")
    if head is None:
        layer = model.layers[-1]
    else:
        try:
            layer = model.get_layer(head)
        except ValueError as error:
            raise ValueError(
                f"`{argument}={head!r}` names no layer of {model.name!r}. {fix}") from error
    if not isinstance(layer, (keras.layers.Dense, keras.layers.ReversibleEmbedding)):
        raise ValueError(
            f"The chunked path cannot identify the head of {model.name!r}: its layer "
            f"{layer.name!r} is a {type(layer).__name__}, not a `Dense` or "
            f"`ReversibleEmbedding`. {fix}")
    try:
        LinearHead.from_layer(layer)
    except ValueError as error:
        raise ValueError(f"`{argument}`: {error} {fix}") from error
    if layer.output is not outputs[0]:
        raise ValueError(
            f"The head {layer.name!r} does not compute {model.name!r}'s output (a layer "
            f"runs after it, or it is shared). {fix}")
    if isinstance(layer, keras.layers.ReversibleEmbedding):
        raise ValueError(
            f"{model.name!r}'s head {layer.name!r} is a ReversibleEmbedding outside a "
            f"KerasHub CausalLM. {fix}")
    sub_model = keras.Model(model.inputs, layer.input, name=f"{model.name}_hidden")
    return ModelHead(lambda x, training=None: sub_model(x, training=training), layer)
