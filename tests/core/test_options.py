"""The CLI flags and the run config are derived from one dataclass declaration."""

import argparse
from dataclasses import dataclass

from al_assets.core.options import add_options, given, option, options
from al_assets.core.simulation.config import SimulationConfig
from al_assets.orchestration.config import derived_config


@dataclass(frozen=True)
class _Settings:
    rounds: int = option(3, "how many rounds")
    agg: str = option("mean", "how boxes combine")
    deduplicate: bool = option(True, "drop near-duplicates")
    seeds: tuple[int, ...] = option((0, 1), "seeds to run")
    device: str | None = option(None, "torch device")


def test_flags_carry_type_help_and_default_none_so_unset_flags_are_not_overrides():
    parser = argparse.ArgumentParser()
    add_options(parser, _Settings, help_extra={"rounds": "per seed"})
    args = parser.parse_args(["--rounds", "5", "--no-deduplicate", "--seeds", "4", "7"])
    assert given(vars(args), _Settings) == {"rounds": 5, "deduplicate": False, "seeds": (4, 7)}
    text = parser.format_help()
    assert "how many rounds (default: 3); per seed" in text
    assert [o.name for o in options(_Settings, exclude=("device",))] == [
        "rounds", "agg", "deduplicate", "seeds"]
    assert options(_Settings)[-1].optional


def test_run_config_is_derived_with_the_same_defaults_and_descriptions():
    config_cls = derived_config("SettingsConfig", _Settings)
    fields = config_cls.model_fields
    assert fields["rounds"].default == 3 and fields["rounds"].description == "how many rounds"
    dumped = config_cls(rounds=9).model_dump()
    assert _Settings(**given(dumped, _Settings)) == _Settings(rounds=9)


def test_every_simulation_setting_has_a_cli_flag_with_help():
    parser = argparse.ArgumentParser()
    add_options(parser, SimulationConfig)
    flags = {a.dest: a for a in parser._actions}
    for opt in options(SimulationConfig):
        assert opt.help, f"{opt.name} has no help text"
        assert opt.name in flags
