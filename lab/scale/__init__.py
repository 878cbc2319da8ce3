"""Scaling studies (``lab scale``): the study file (:mod:`.spec`), the queue and results (:mod:`.study`),
the fits (:mod:`.fit`). A study's queue entries carry ``sweep = "scale:NAME"``."""

SCALE_TAG = "scale:"


def entry_label(entry) -> str | None:
    """'scale NAME: POINT' for a scaling study's queue entry (None for any other entry)."""
    tag = getattr(entry, "sweep", None) or ""
    if not tag.startswith(SCALE_TAG):
        return None
    study = tag[len(SCALE_TAG):]
    point = entry.name[len(study) + 1:] if entry.name.startswith(study + "-") else f"#{entry.trial}"
    return f"scale {study}: {point}"
