"""Teacher-output caching: compute a frozen teacher's logits once.

A cached batch carries the teacher's logits beside the labels, as the target
`{"labels": y, "teacher_logits": t}`. `Distiller.train_step` recognises that
target and skips the teacher's forward pass; `test_step` and `predict` ignore
the logits.
"""

LABELS_KEY = "labels"
TEACHER_LOGITS_KEY = "teacher_logits"


def split_targets(y):
    """Splits a target into `(labels, teacher_logits)`.

    Args:
        y: Labels, or a dict `{"labels": ..., "teacher_logits": ...}` made by
            the cache.

    Returns:
        `(labels, teacher_logits)`; `teacher_logits` is `None` for plain
        labels.
    """
    if isinstance(y, dict) and TEACHER_LOGITS_KEY in y:
        return y.get(LABELS_KEY), y[TEACHER_LOGITS_KEY]
    return y, None
