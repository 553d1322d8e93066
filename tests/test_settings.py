"""``wrap``'s signature and its defaults, written once in :class:`undiscard.settings.Settings`: the
signature, ``wrap``'s docstring and every subcommand's ``--help`` say the same defaults."""
from __future__ import annotations

import argparse
import inspect
import re
import typing
from dataclasses import fields

import pytest

import undiscard
from undiscard.cli import build_parser
from undiscard.settings import (
    DEFAULT_BUDGET,
    DEFAULTS,
    AggregateName,
    CriterionName,
    Settings,
    TaskName,
)

SETTINGS = [f.name for f in fields(Settings)]

# Options named like a Settings field that are a command's own, not a wrap() setting, with their reason.
COMMAND_OWN = {
    ("demo", "aggregate"): "comma-separated aggregations compared in one run",
    ("demo", "align"): "on/off/both: the alignments compared in one run",
    ("demo", "seed"): "the seed of the demo's shifts (wrap keeps its own)",
    ("demo", "aggregator"): "one file for a single --models (zoo models otherwise use their own)",
    ("fit-tta", "aggregate"): "the image-space TTA aggregator being fitted",
    ("fit-tta", "seed"): "the seed of the --limit subset",
    ("fit-tta", "budget"): "phase states per view",
    ("eval", "task"): "the data's format (an image folder or images/ and masks/)",
    ("calibrate", "task"): "the data's format and the objective",
    ("predict", "task"): "what to write: top-k classes, or masks and overlays",
}


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _wrap_params() -> list[inspect.Parameter]:
    return list(inspect.signature(undiscard.wrap).parameters.values())


def test_wrap_has_no_var_keyword_and_every_setting_is_keyword_only():
    params = _wrap_params()
    assert [p.name for p in params[:2]] == ["net", "budget"]
    assert all(p.kind is not inspect.Parameter.VAR_KEYWORD and p.kind is not inspect.Parameter.VAR_POSITIONAL
               for p in params)
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[2:])
    with pytest.raises(TypeError):
        undiscard.wrap(undiscard.Undiscard, 8, "entropy")  # type: ignore[misc] - positional settings refused


def test_wrap_takes_exactly_the_settings_with_their_defaults():
    params = {p.name: p for p in _wrap_params()[2:]}
    assert sorted(params) == sorted(SETTINGS + ["example_input"])
    assert {n: params[n].default for n in SETTINGS} == {n: getattr(DEFAULTS, n) for n in SETTINGS}
    assert _wrap_params()[1].default == DEFAULT_BUDGET
    assert all(params[n].annotation is not inspect.Parameter.empty for n in params)


def _documented_defaults(doc: str) -> dict[str, str]:
    """Argument name -> the value its ``Args:`` entry in ``doc`` calls the default."""
    entries = re.split(r"\n        (?=\w+: )", doc.split("Args:", 1)[1])
    found = {}
    for entry in entries:
        name, _, text = entry.strip().partition(": ")
        match = re.search(r"default\s+`{0,2}([^`\s,;:)]+)", " ".join(text.split()))
        if match:
            found[name] = match.group(1)
    return found


def test_the_docstring_states_the_signature_defaults():
    documented = _documented_defaults(undiscard.wrap.__doc__)
    params = {p.name: p.default for p in _wrap_params()}
    assert sorted(documented) == sorted(n for n in params if n != "net")  # every default is stated
    assert {n: documented[n] for n in documented} == {n: str(params[n]) for n in documented}


def test_the_docstring_parser_reads_a_default():
    doc = "x\n\n    Args:\n        a: thing (default ``b``).\n        c: other, default 3: more\n"
    assert _documented_defaults(doc) == {"a": "b", "c": "3"}


def _help_default(action: argparse.Action) -> str | None:
    match = re.search(r"\(default: ([^,;)]+)", " ".join((action.help or "").split()))
    return match.group(1) if match else None


def test_every_help_states_the_settings_defaults():
    checked = []
    for command, parser in _subcommands().items():
        wrap_options = parser.get_default("settings_options") or ()
        for action in parser._actions:
            if action.dest not in SETTINGS + ["budget"] or (command, action.dest) in COMMAND_OWN:
                continue
            if action.dest == "budget":
                if command == "predict":  # the one command whose --budget is wrap's own default
                    assert action.default == DEFAULT_BUDGET and _help_default(action) == str(DEFAULT_BUDGET)
                continue
            assert action.dest in wrap_options, f"{command} --{action.dest} is not built from Settings"
            default = getattr(DEFAULTS, action.dest)
            assert action.default in (default, None), (command, action.dest)
            assert _help_default(action) == (None if default is None else str(default)), (command, action.dest)
            checked.append((command, action.dest))
    assert ("eval", "extend") in checked and ("calibrate", "align") in checked and ("eval", "chunk_size") in checked


def test_no_help_claims_background_is_the_default():
    texts = [" ".join((a.help or "").split()) for p in _subcommands().values() for a in p._actions]
    assert [t for t in texts if re.search(r"background[^.;]*\(default\)|default:? background", t)] == []
    assert "background" not in str(_documented_defaults(undiscard.wrap.__doc__))


def test_settings_from_args_reads_the_wrap_options():
    parser = _subcommands()["eval"]
    args = parser.parse_args(["--model", "m", "--data", "d", "--units", "layer1,2", "--no-align", "--extend", "zero",
                              "--chunk-size", "7", "--seed", "3"])
    assert args.criterion is None  # eval works it out (calibrated with --order)
    settings = Settings.from_args(args, criterion="offset", aggregate="mean")
    assert settings == Settings(units=["layer1", 2], align=False, extend="zero", chunk_size=7, seed=3, aggregate="mean",
                                criterion="offset")
    assert undiscard.wrap(_tiny(), budget=1, **settings.as_kwargs()).extend == "zero"


def _tiny():
    import torch.nn as nn

    return nn.Sequential(nn.Conv2d(1, 2, 3, 2), nn.Flatten()).eval()


def test_the_model_keeps_its_settings():
    settings = Settings(criterion="offset", aggregate="mean", align=False, chunk_size=9, seed=5)
    model = undiscard.Undiscard(_tiny(), 4, settings)
    assert model.settings is settings
    assert (model.criterion, model.aggregate, model.align, model.chunk_size, model.seed) == ("offset", "mean", False,
                                                                                             9, 5)
    wrapped = undiscard.wrap(_tiny(), budget=4, criterion="offset", aggregate="mean", align=False, chunk_size=9, seed=5)
    assert wrapped.settings == settings


@pytest.mark.parametrize("alias, registered", [(CriterionName, "undiscard.search.criteria"),
                                               (AggregateName, "undiscard.tasks.aggregation"),
                                               (TaskName, "undiscard.tasks")])
def test_the_literal_names_are_the_built_in_registrations(alias, registered):
    literal = next(a for a in typing.get_args(alias) if typing.get_origin(a) is typing.Literal)
    listing = {"undiscard.search.criteria": undiscard.list_criteria, "undiscard.tasks.aggregation":
               undiscard.list_aggregates, "undiscard.tasks": undiscard.list_tasks}[registered]
    built_in = [n for n in listing() if _entry_module(registered, n).startswith("undiscard.")]
    assert sorted(typing.get_args(literal)) == sorted(built_in)


def _entry_module(kind: str, name: str) -> str:
    from undiscard.search.criteria import get_criterion
    from undiscard.tasks.aggregation import get_aggregate
    from undiscard.tasks.base import get_task

    get = {"undiscard.search.criteria": get_criterion, "undiscard.tasks.aggregation": get_aggregate,
           "undiscard.tasks": get_task}[kind]
    return type(get(name)).__module__
