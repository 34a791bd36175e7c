"""Pretrained weights through timm: where a tag's weights come from, whether this machine can have
them before a trial starts, and the record of the norm layers a trial started from scratch.

timm loads a tag's weights from the Hugging Face Hub with `hf_hub_download`, so the usual cache
(`HF_HOME`, `HF_HUB_CACHE`), `HF_HUB_OFFLINE`, mirrors (`HF_ENDPOINT`) and tokens apply.
Validation asks the same cache with huggingface_hub's `try_to_load_from_cache` and, when the
weights are not cached and downloads are allowed, the Hub itself (a metadata request per file,
`HUB_TIMEOUT_S`, all tags at once, the whole check bounded), so a study whose weights cannot be
had is refused before anything starts, naming the tag and where it looked.

Imports neither torch nor timm (huggingface_hub only when asked): validation reads it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

HUB_TIMEOUT_S = 3.0  # per request to the Hub; the whole check waits at most this + 1 s
# An epoch report's comma-separated names of the backbone's norm layers that replaced pretrained
# ones of another kind and started from scratch (`model.reinit_replaced_norms`); absent when no
# pretrained weights were loaded. The results row and MLflow params are derived from it.
REINIT_KEY = "reinit_norm_layers"
REINIT_COUNT = "reinit_norms"
# MLflow params hold at most 500 characters on servers before MLflow 2 (6000 since): the layer
# names are cut to fit the smaller, the count says how many there are.
PARAM_TEXT_LIMIT = 500


@dataclass(frozen=True)
class WeightsSource:
    """Where timm gets one tag's weights: a Hub repo (`id@revision` allowed) and the files it
    tries there, in timm's order (safetensors first)."""

    name: str  # architecture.tag, e.g. resnet50.a1_in1k
    hf_hub_id: str
    files: tuple[str, ...]


# Where timm's weights come from: the driver validates a study against these, so its trials use
# the same (a Ray instance started before they were set would not give them to its workers).
HF_ENV = ("HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE", "HF_ENDPOINT")


def hf_environment(environ=None) -> dict[str, str]:
    """This process's Hugging Face cache settings (`HF_ENV`), to hand to trials."""
    import os

    environ = os.environ if environ is None else environ
    return {k: environ[k] for k in HF_ENV if k in environ}


def use_hf_environment(env: dict[str, str]) -> None:
    """Take `env` (`hf_environment` of another process) as this process's cache settings, also
    where huggingface_hub has already read its environment (it does so once, at import)."""
    import os
    import sys

    for name in HF_ENV:
        os.environ.pop(name, None)
    os.environ.update(env)
    if "huggingface_hub" in sys.modules:
        from huggingface_hub import constants

        home = os.path.expanduser(env.get("HF_HOME", os.path.join(
            os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "huggingface")))
        constants.HF_HOME = home
        constants.HF_HUB_CACHE = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE") \
            or os.path.join(home, "hub")
        constants.HF_HUB_OFFLINE = env.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
        if "HF_ENDPOINT" in env:
            constants.ENDPOINT = env["HF_ENDPOINT"].rstrip("/")


def cache_dir() -> str:
    """The Hugging Face hub cache timm downloads into and reads from (huggingface_hub's)."""
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def cached_file(source: WeightsSource) -> str | None:
    """The cached weights file timm would load for `source`, or None."""
    from huggingface_hub import try_to_load_from_cache

    repo, _, revision = source.hf_hub_id.partition("@")
    for filename in source.files:
        hit = try_to_load_from_cache(repo, filename, cache_dir=cache_dir(), revision=revision or None)
        if isinstance(hit, str):
            return hit
    return None


def _hub_problem(source: WeightsSource, timeout_s: float) -> str | None:
    """Why the Hub (or its mirror) cannot give `source`'s weights now, or None if it can."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import EntryNotFoundError

    repo, _, revision = source.hf_hub_id.partition("@")
    for filename in source.files:
        try:
            get_hf_file_metadata(hf_hub_url(repo, filename, revision=revision or None),
                                 timeout=timeout_s)
            return None
        except EntryNotFoundError:
            continue  # timm tries the next file
        except Exception as e:  # noqa: BLE001 - any failure to reach or read the Hub is the answer
            why = " ".join(str(e).split())[:200]
            return f"{constants.ENDPOINT} cannot be reached ({type(e).__name__}: {why})"
    return f"{constants.ENDPOINT} has none of {', '.join(source.files)} in {repo}"


def unavailable(sources: Iterable[WeightsSource], timeout_s: float = HUB_TIMEOUT_S) -> dict[str, str]:
    """name -> why its weights cannot be had on this machine (absent: they can): not cached,
    and either downloads are off (HF_HUB_OFFLINE) or the Hub cannot give them within
    `timeout_s`. The Hub is asked for every uncached tag at once, in daemon threads, so a
    resolver that hangs delays the answer by `timeout_s` + 1 s at most and never the exit."""
    from huggingface_hub import constants

    missing = [s for s in dict.fromkeys(sources) if cached_file(s) is None]
    where = f"not in the Hugging Face cache {cache_dir()}"
    if constants.is_offline_mode():
        return {s.name: f"{where}, and HF_HUB_OFFLINE is set (no downloads)" for s in missing}
    answers: dict[str, str | None] = {}

    def ask(source: WeightsSource) -> None:
        answers[source.name] = _hub_problem(source, timeout_s)

    threads = [threading.Thread(target=ask, args=(s,), daemon=True) for s in missing]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout_s + 1.0
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    out = {}
    for s in missing:
        why = answers.get(s.name, f"{constants.ENDPOINT} did not answer within {timeout_s:g} s")
        if why is not None:
            out[s.name] = f"{where}, and {why}"
    return out


def reinit_columns(names: str | None) -> dict[str, object]:
    """A results row's record of a trial's from-scratch norm layers (`REINIT_KEY`'s value in
    its epoch reports): their count and names; nulls when no pretrained weights were loaded."""
    if names is None:
        return {REINIT_COUNT: None, REINIT_KEY: None}
    layers = [n for n in names.split(",") if n]
    return {REINIT_COUNT: len(layers), REINIT_KEY: ", ".join(layers)}


def reinit_params(names: str) -> dict[str, object]:
    """MLflow params of a trial's from-scratch norm layers (`REINIT_KEY`'s value): their count
    and their names, cut to `PARAM_TEXT_LIMIT` characters."""
    layers = [n for n in names.split(",") if n]
    text = ", ".join(layers)
    if len(text) > PARAM_TEXT_LIMIT:
        kept: list[str] = []
        for n in layers:
            more = f" ... (+{len(layers) - len(kept) - 1} more)"
            if len(", ".join([*kept, n])) + len(more) > PARAM_TEXT_LIMIT:
                break
            kept.append(n)
        text = ", ".join(kept) + f" ... (+{len(layers) - len(kept)} more)"
    return {REINIT_COUNT: len(layers), REINIT_KEY: text}


__all__ = ["HF_ENV", "HUB_TIMEOUT_S", "PARAM_TEXT_LIMIT", "REINIT_COUNT", "REINIT_KEY", "WeightsSource",
           "cache_dir", "cached_file", "hf_environment", "reinit_columns", "reinit_params", "unavailable",
           "use_hf_environment"]
