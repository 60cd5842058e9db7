"""The CLI's flags and the config dataclasses cannot drift: a command without flags builds the defaults, each flag sets
the field of its name, and every field is either a flag or listed here as deliberately left off the command line."""

from __future__ import annotations

import re
from dataclasses import asdict, fields, replace

import pytest

from flows.cli import build_config, parser
from vaepipe.config import BuildConfig, EmbedConfig, IndexConfig, IngestConfig, TrainConfig

# Fields without a flag: recipe internals that BENCHMARKS.md tuned (set them from Python), or set another way.
NOT_ON_THE_CLI = {
    "ingest": {"checkpoint_every"},
    "train": {"extra_dim", "normalised_means", "standardised_input", "width", "batch_norm", "temperature", "warmup_epochs", "val_fraction",
              "max_images", "min_epochs", "image_passes", "max_restarts", "retrain_when_grown", "batch_size",
              "checkpoint_minutes"},
    "embed": {"batch_size", "threads"},
    "index": {"exact_below", "in_ram_below", "target_recall", "recall_sample"},
}
# Flags whose name is not their field's.
RENAMED = {("embed", "part_rows"): "--shard-size", ("index", "kind"): "--index-kind"}
# A value other than the default for each field that has a flag.
OTHER = {int: 7, float: 0.25, bool: True, str: None}
VALID_OTHER = {("train", "image_size"): 32}  # where the config refuses 7


def _args(*flags: str):
    return parser().parse_args(["index", "images", "--workdir", "w", *flags])


@pytest.mark.parametrize("command", ["index", "pipeline"])
def test_a_command_without_flags_builds_the_default_config(command):
    a = parser().parse_args([command, "images", "--workdir", "w"])
    assert asdict(build_config(a)) == asdict(BuildConfig())


@pytest.mark.parametrize("section,cls", [("ingest", IngestConfig), ("train", TrainConfig), ("embed", EmbedConfig),
                                         ("index", IndexConfig)])
def test_every_config_field_has_its_flag_or_is_listed_as_left_off(section, cls):
    options = {opt for action in parser()._subparsers._group_actions[0].choices["index"]._actions
               for opt in action.option_strings}
    for f in fields(cls):
        if f.name in NOT_ON_THE_CLI[section]:
            assert f"--{f.name.replace('_', '-')}" not in options, f"{section}.{f.name} has a flag: take it off the list"
            continue
        flag = RENAMED.get((section, f.name), f"--{f.name.replace('_', '-')}")
        assert flag in options, f"{section}.{f.name}: no {flag} flag; add one or list it in NOT_ON_THE_CLI"
        default = getattr(cls(), f.name)
        if isinstance(default, bool):
            values = [flag]
            want = True
        elif isinstance(default, tuple):
            values, want = [flag, "*.json"], ("*.json",)
        else:
            choices = next(a.choices for a in parser()._subparsers._group_actions[0].choices["index"]._actions
                           if flag in a.option_strings)
            want = next(c for c in choices if c != default) if choices else VALID_OTHER.get(
                (section, f.name), OTHER[type(default)] if default is not None else 7)
            values = [flag, str(want)]
        got = getattr(getattr(build_config(_args(*values)), section), f.name)
        assert got == want, f"{flag} {values[1:]} set {section}.{f.name} to {got!r}"


@pytest.mark.parametrize("make,message", [
    (lambda: IngestConfig(workers=0), "workers must be at least 1"),
    (lambda: IngestConfig(checkpoint_every=0), "checkpoint every must be at least 1"),
    (lambda: TrainConfig(image_size=30, latent_dim=0), "image size must be a multiple of 4"),
    (lambda: TrainConfig(seed=-1), "seed must be at least 0"),
    (lambda: EmbedConfig(part_rows=0), "shard size (part rows) must be at least 1"),
    (lambda: EmbedConfig(workers=-1), "workers must be at least 0"),
    (lambda: EmbedConfig(threads=0), "threads must be at least 1"),
    (lambda: IndexConfig(kind="annoy"), "index kind must be one of"),
    (lambda: IndexConfig(target_recall=1.5), "target recall must be more than 0 and at most 1"),
    (lambda: replace(BuildConfig().train, epochs=0), "epochs must be at least 1"),
])
def test_a_config_refuses_bad_settings_where_it_is_made(make, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make()


def test_a_bad_config_given_to_a_flow_is_refused_before_the_flow_runs():
    from flows.build_index import build_index
    from prefect.exceptions import ParameterTypeError

    with pytest.raises(ParameterTypeError, match="epochs must be at least 1"):
        build_index.validate_parameters({"images": "i", "workdir": "w", "config": {"train": {"epochs": 0}}})
