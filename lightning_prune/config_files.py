"""Experiment files: composed from the files their ``defaults`` name, and what a composed config computes."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import yaml

from lightning_prune.errors import ConfigError
from lightning_prune.names import callback_task


def composed(path: Path, seen: tuple[Path, ...] = ()) -> list[Path]:
    """``path`` preceded by the files its ``defaults`` list names (relative to it), depth first.

    ``--config`` files given one after another merge key by key; this turns one experiment file
    into that stack, so shared settings live once (base, dataset, task) and the experiment file
    states only what differs.
    """
    if not path.is_file():
        return [path]  # jsonargparse names the missing file
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"--config {path}: not valid YAML ({' '.join(str(err).split())})") from err
    if not isinstance(data, dict):
        got = "an empty file" if data is None else f"a {type(data).__name__}"
        raise ConfigError(f"--config {path}: must be a YAML mapping of options (e.g. `trainer: {{max_epochs: 3}}`), "
                          f"got {got}")
    bases = data.get("defaults")
    stack: list[Path] = []
    for base in [bases] if isinstance(bases, str) else bases or []:
        base_path = Path(os.path.normpath(path.parent / str(base)))
        if not base_path.is_file():
            raise ConfigError(f"--config {path}: defaults names {base}, which is not a file")
        if base_path.resolve() in seen:
            raise ConfigError(f"--config {path}: defaults loop through {base}")
        stack += composed(base_path, (*seen, path.resolve()))
    return [*stack, path]


def expand_configs(argv: list[str]) -> list[str]:
    """Each ``--config FILE`` becomes the stack of files it builds on; a file already applied is not applied again."""
    out: list[str] = []
    applied: set[Path] = set()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config" and i + 1 < len(argv):
            value, i = argv[i + 1], i + 2
        elif arg.startswith("--config="):
            value, i = arg.split("=", 1)[1], i + 1
        else:
            out.append(arg)
            i += 1
            continue
        for path in composed(Path(value)):
            key = path.resolve()
            if key not in applied:
                applied.add(key)
                out += ["--config", str(path)]
    return out


def config_key(cfg: Any) -> str:
    """What a run computes, minus its seed and where it writes: runs with the same key differ only in seed.

    The run it starts from counts by experiment, not version (``run:E/version_3`` is ``run:E``): the seeds of
    a 1a run prune the baselines of their own seeds, and are still one configuration.
    """
    settings = cfg.clone().as_dict()
    for key in ("seed_everything", "run", "config", "defaults", "ckpt_path"):
        settings.pop(key, None)
    settings.get("trainer", {}).pop("logger", None)
    settings.get("trainer", {}).pop("default_root_dir", None)
    settings.get("checkpoint", {}).pop("dirpath", None)
    text = re.sub(r"/version_\d+", "", json.dumps(settings, sort_keys=True, default=str))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def config_task(cfg: Any) -> str | None:
    """The task the config's pruning callback records (``baseline`` without one; None if it names none)."""
    prune = cfg.get("prune")
    if not prune:
        return "baseline"
    init_args = prune.get("init_args") or {}
    return callback_task(prune.get("class_path"), init_args.get("method"))


def checkpoint_task(ckpt: dict) -> str | None:
    """The task that pruned a checkpoint's model (``baseline`` when it holds no pruning at all)."""
    recorded = (ckpt.get("pruning") or {}).get("task")
    if recorded:
        return recorded
    masked = any(key.endswith("weight_mask") for key in (ckpt.get("state_dict") or {}))
    return None if masked else "baseline"
