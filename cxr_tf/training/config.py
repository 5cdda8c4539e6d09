"""Training configs: ``pipelines/`` is the one source of defaults.

A config is built in layers, later ones winning:

1. ``pipelines/base.yaml`` (every key, with the fusion study's hyper-parameters), then
   ``pipelines/<arch>.yaml`` (only what differs for that architecture);
2. an optional ``--config FILE`` (any subset of keys; its ``arch`` picks layer 1);
3. command-line overrides: the named flags of ``python -m cxr_tf.fit`` and
   ``--set dotted.key=value`` (value parsed as YAML: ``--set phases.1.epochs=3``,
   ``--set augment.flip=true``).

``validate`` checks the merged result against ``SCHEMA`` and returns a normalised
copy; unknown keys and bad values raise ``ConfigError`` (a ``ValueError``) naming
the key, the value and what is allowed. The allowed values of a key come from the module
that implements it (losses, strategies, threshold methods, augmentation placement).
"""

import copy
import math
from pathlib import Path

import yaml

from cxr_tf.data.augment import AUGMENT_ON
from cxr_tf.data.labels import check_findings
from cxr_tf.data.sources import check_ratio
from cxr_tf.evaluation.thresholds import THRESHOLD_METHODS
from cxr_tf.training.distribute import STRATEGIES
from cxr_tf.training.callbacks import MONITORS
from cxr_tf.training.losses import LOSSES
from cxr_tf.training.optimizers import OPTIMIZERS

PACKAGED_PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"
"""``cxr_tf/pipelines/``: the configs an installed wheel carries (copied from the
checkout's ``pipelines/`` at build time by ``setup.py``; absent in a checkout)."""
CHECKOUT_PIPELINES = Path(__file__).resolve().parents[2] / "pipelines"
"""The repository's ``pipelines/`` folder (next to the ``cxr_tf`` package): the one source edited."""


def default_pipelines_dir():
    """The installed package's configs when present, else the checkout's ``pipelines/``
    (so ``cxr-tf-fit --arch NAME`` works from any folder after ``pip install``)."""
    return PACKAGED_PIPELINES if PACKAGED_PIPELINES.is_dir() else CHECKOUT_PIPELINES


PIPELINES_DIR = default_pipelines_dir()
"""Where ``pipelines/<arch>.yaml`` are read from (see ``default_pipelines_dir``)."""
BASE = "base"
"""``pipelines/base.yaml``: the layer under every architecture's file (not an architecture)."""

MIXED_PRECISION = (False, True, "mixed_float16", "mixed_bfloat16")

RUN_KEYS = ("strategy", "tensorboard", "verbose", "out", "jit_compile", "backup_every")
"""Keys that may change between a killed run and its restart (how it runs, not what
it learns); every other key must match for ``fit`` to resume a run."""


class ConfigError(ValueError):
    """A config key or value that is not allowed; the message names both and the fix."""


# --------------------------------------------------------------------------- value checks
def _where(key, source):
    return f"{source}: {key}" if source else key


def _int(lo=None, hi=None):
    def check(value, key, source):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{_where(key, source)}={value!r}: expected an integer")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ConfigError(f"{_where(key, source)}={value!r}: must be in [{lo}, {hi if hi is not None else 'inf'}]")
        return value
    return check


def _float(lo=None, hi=None, lo_open=False, hi_open=False):
    def check(value, key, source):
        if isinstance(value, str):  # PyYAML reads 1e-5 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{_where(key, source)}={value!r}: expected a number")
        value = float(value)
        bad_lo = lo is not None and (value <= lo if lo_open else value < lo)
        bad_hi = hi is not None and (value >= hi if hi_open else value > hi)
        if bad_lo or bad_hi:
            left, right = "(" if lo_open else "[", ")" if hi_open else "]"
            raise ConfigError(f"{_where(key, source)}={value!r}: must be in {left}{lo}, {hi if hi is not None else 'inf'}{right}")
        return value
    return check


def _bool(value, key, source):
    if not isinstance(value, bool):
        raise ConfigError(f"{_where(key, source)}={value!r}: expected true or false")
    return value


def _choice(*allowed):
    def check(value, key, source):
        if value not in allowed or isinstance(value, bool) != any(isinstance(a, bool) and a == value for a in allowed):
            raise ConfigError(f"{_where(key, source)}={value!r}: allowed values are {', '.join(map(repr, allowed))}")
        return value
    return check


def _str(value, key, source):
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{_where(key, source)}={value!r}: expected a non-empty string")
    return value


def _weights(value, key, source):
    """None (random init), 'imagenet', or the path of a weights file."""
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
        return None
    if value == "imagenet":
        return value
    if isinstance(value, str):
        if not Path(value).expanduser().is_file():
            raise ConfigError(f"{_where(key, source)}={value!r}: no such file; use imagenet, none, "
                              "or the path of a .weights.h5 / .keras file")
        return str(Path(value).expanduser().resolve())
    raise ConfigError(f"{_where(key, source)}={value!r}: allowed values are imagenet, none or a file path")


def _init_from(value, key, source):
    """None, or a run folder (``fit``'s or ``import_weights``'; its ``latest`` file or a path inside
    it) to warm-start from: its absolute path."""
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
        return None
    from cxr_tf.runs import resolve_run_dir

    try:
        return str(resolve_run_dir(str(value)).expanduser().resolve())
    except FileNotFoundError as err:
        raise ConfigError(f"{_where(key, source)}={value!r}: {err}") from None


def _findings(value, key, source):
    """None (every finding of the records), or a list of distinct finding names (common names;
    whether the records label them is checked when they are read)."""
    if value is None:
        return None
    try:
        return list(check_findings(value))
    except ValueError:
        raise ConfigError(f"{_where(key, source)}={value!r}: expected null or a list of distinct finding "
                          "names") from None


def _ratio(value, key, source):
    """None (sample records folders by their sizes), or one non-negative number per folder
    (their number is checked when the records are read)."""
    if value is None:
        return None
    try:
        return check_ratio(value, what=_where(key, source))
    except ValueError as err:
        raise ConfigError(f"{err}; or null to sample them by their sizes") from None


def _mixed_precision(value, key, source):
    if isinstance(value, str) and value.lower() in ("true", "false", "on", "off"):
        value = value.lower() in ("true", "on")
    return _choice(*MIXED_PRECISION)(value, key, source)


def _auto_or(check):
    def wrapped(value, key, source):
        return "auto" if value == "auto" else check(value, key, source)
    return wrapped


def _epoch_or_steps(value, key, source):
    return "epoch" if value == "epoch" else _int(1)(value, key, source)


def _cache(value, key, source):
    if isinstance(value, bool) or (isinstance(value, str) and value.strip()):
        return value
    raise ConfigError(f"{_where(key, source)}={value!r}: expected true, false or a file path prefix")


def _augment(value, key, source):
    if value is False:
        return False  # no augmentation at all
    if not isinstance(value, dict):
        raise ConfigError(f"{_where(key, source)}={value!r}: expected false or a mapping of augmentation parameters")
    from cxr_tf.data.augment import resolve_params  # the augment module owns its keys and ranges

    try:
        resolved = resolve_params(value)
    except ValueError as err:
        raise ConfigError(f"{_where(key, source)}: {err}") from None
    return {k: list(v) if isinstance(v, tuple) else v for k, v in resolved.items()}


SCHEMA = {
    "arch": _str,
    "image_size": _int(16, 2048),
    "batch_size": _int(1),
    "weights": _weights,
    "init_from": _init_from,
    "dropout": _float(0.0, 1.0, hi_open=True),
    "head_units": _int(0),
    "mc_dropout": _bool,
    "loss": {
        "name": _choice(*LOSSES),
        "alpha": _float(0.0, 1.0),
        "gamma": _float(0.0),
        "label_smoothing": _float(0.0, 1.0, hi_open=True),
        "min_prevalence": _float(0.0, 0.5, lo_open=True),
    },
    "optimizer": {
        "name": _choice(*OPTIMIZERS),
        "weight_decay": _float(0.0),
        "momentum": _float(0.0, 1.0, hi_open=True),
    },
    "monitor": _choice(*MONITORS),
    "phases": [{
        "name": _str,
        "epochs": _int(0),
        "learning_rate": _float(0.0, lo_open=True),
        "train_backbone": _bool,
    }],
    "reduce_lr": {
        "factor": _float(0.0, 1.0, lo_open=True, hi_open=True),
        "patience": _int(0),
        "min_lr": _float(0.0),
    },
    "early_stopping": {"patience": _int(0)},
    "augment": _augment,
    "augment_on": _choice(*AUGMENT_ON),
    "threshold_method": _choice(*THRESHOLD_METHODS),
    "records": _str,
    "records_ratio": _ratio,
    "findings": _findings,
    "out": _str,
    "seed": _int(0),
    "mixed_precision": _mixed_precision,
    "strategy": _choice(*STRATEGIES),
    "jit_compile": _auto_or(_bool),
    "tensorboard": _bool,
    "backup_every": _epoch_or_steps,
    "shuffle_buffer": _int(1),
    "cache": _cache,
    "verbose": _auto_or(_choice(0, 1, 2)),
}


def _check_mapping(value, schema, prefix, source, complete=True):
    if not isinstance(value, dict):
        raise ConfigError(f"{_where(prefix or 'config', source)}: expected a mapping, got {value!r}")
    unknown = sorted(set(value) - set(schema))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"{source + ': ' if source else ''}unknown key(s) {', '.join(where + k for k in unknown)}; "
                          f"allowed keys{' of ' + prefix if prefix else ''}: {', '.join(schema)}")
    missing = [k for k in schema if k not in value]
    if complete and missing:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"{source + ': ' if source else ''}missing key(s) {', '.join(where + k for k in missing)} "
                          f"(pipelines/base.yaml has them all; start from it)")
    out = {}
    for key, check in schema.items():
        if key not in value:
            continue
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(check, dict):
            out[key] = _check_mapping(value[key], check, name, source, complete)
        elif isinstance(check, list):
            items = value[key]
            if not isinstance(items, list) or not items:
                raise ConfigError(f"{_where(name, source)}={items!r}: expected a non-empty list")
            out[key] = [_check_mapping(item, check[0], f"{name}.{i}", source, complete)
                        for i, item in enumerate(items)]
        else:
            out[key] = check(value[key], name, source)
    return out


def validate(config, source=None):
    """A normalised, fully checked copy of ``config`` (every ``SCHEMA`` key present).

    ``source`` (e.g. the file name) prefixes error messages. Raises ConfigError."""
    config = _check_mapping(config, SCHEMA, "", source)
    names = [phase["name"] for phase in config["phases"]]
    if len(set(names)) != len(names):
        raise ConfigError(f"{_where('phases', source)}: phase names must be unique, got {names}")
    if all(phase["epochs"] == 0 for phase in config["phases"]):
        raise ConfigError(f"{_where('phases', source)}: every phase has 0 epochs; nothing would be trained")
    return config


# --------------------------------------------------------------------------- loading
def available_archs(pipelines_dir=None):
    """Names that have a ``pipelines/<name>.yaml`` (base.yaml aside), sorted."""
    folder = Path(pipelines_dir or PIPELINES_DIR)
    return sorted(p.stem for p in folder.glob("*.yaml") if p.stem != BASE)


def read_yaml(path):
    """The mapping in a YAML file; ConfigError naming the file if it is missing or not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    return data


def pipeline_path(arch, pipelines_dir=None):
    """``pipelines/<arch>.yaml``; ConfigError listing the known names if there is none."""
    folder = Path(pipelines_dir or PIPELINES_DIR)
    path = folder / f"{arch}.yaml"
    if not path.is_file():
        known = available_archs(folder)
        raise ConfigError(f"arch={arch!r}: no pipeline {path}; allowed values are {', '.join(known) or '(none found)'}")
    return path


def deep_merge(base, update):
    """``base`` with ``update`` merged in: mappings merge key by key, anything else
    (lists included) is replaced. Neither argument is modified."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_assignments(items):
    """``["loss.gamma=1.5", "phases.0.epochs=2"]`` -> ``{"loss.gamma": 1.5, ...}``
    (values parsed as YAML scalars)."""
    out = {}
    for item in items or ():
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set loss.gamma=1.5")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out


def set_dotted(config, dotted, value):
    """Set ``config[a][b][i]`` for ``dotted="a.b.i"`` in place (list indices are integers).
    Unknown keys are left for ``validate`` to report; a bad list index raises here."""
    parts = dotted.split(".")
    node = config
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"{dotted}: {'.'.join(parts[:depth]) or 'config'} has {len(node)} entries; "
                                  f"{part!r} is not an index in 0..{len(node) - 1}")
            part = int(part)
        elif not isinstance(node, dict):
            raise ConfigError(f"{dotted}: {'.'.join(parts[:depth])} is not a mapping")
        if last:
            node[part] = value
        else:
            if isinstance(node, dict) and part not in node:
                node[part] = {}
            node = node[part]


def set_epochs(config, epochs):
    """Apply ``--epochs``: one int for every phase, or a list with one per phase."""
    phases = config["phases"]
    if isinstance(epochs, int):
        epochs = [epochs] * len(phases)
    if len(epochs) != len(phases):
        raise ConfigError(f"--epochs {','.join(map(str, epochs))}: {len(epochs)} values for "
                          f"{len(phases)} phases ({', '.join(p['name'] for p in phases)})")
    for phase, n in zip(phases, epochs):
        phase["epochs"] = n


def load_config(arch=None, config_file=None, overrides=None, epochs=None, pipelines_dir=None):
    """The validated config for ``arch`` (or the ``arch`` in ``config_file``).

    overrides: ``{dotted_key: value}`` applied last (named flags and ``--set``).
    epochs: int or list of ints, applied to ``phases`` (see ``set_epochs``)."""
    overrides = dict(overrides or {})
    layer = {}
    source = None
    if config_file is not None:
        layer = read_yaml(config_file)
        source = str(config_file)
    arch = overrides.pop("arch", None) or arch or layer.get("arch")
    if arch == BASE:
        raise ConfigError(f"arch={BASE!r}: pipelines/{BASE}.yaml is the shared base, not an architecture; "
                          f"choose one of {', '.join(available_archs(pipelines_dir))}")
    if not arch:
        raise ConfigError("no architecture: pass --arch NAME (one of "
                          f"{', '.join(available_archs(pipelines_dir))}) or a --config file with an arch key")
    folder = Path(pipelines_dir or PIPELINES_DIR)
    arch_path = folder / f"{arch}.yaml"
    if arch_path.is_file():
        config = deep_merge(deep_merge(read_yaml(folder / f"{BASE}.yaml"), read_yaml(arch_path)), layer)
        source = source or str(arch_path)
    elif config_file is not None:
        config = layer  # a complete config for an architecture without a pipeline file
    else:
        pipeline_path(arch, pipelines_dir)  # raises with the known names
    config["arch"] = arch
    for key, value in overrides.items():
        set_dotted(config, key, value)
    if epochs is not None:
        if not isinstance(config.get("phases"), list):
            raise ConfigError("--epochs: the config has no phases list")
        set_epochs(config, epochs)
    return validate(config, source=source if not overrides and epochs is None else f"{source} + overrides")


def resume_signature(config):
    """The part of a resolved config that must match for a restart to continue a run."""
    return {k: v for k, v in config.items() if k not in RUN_KEYS}
