"""The warm-up stage of `[scheduler]`: episodes start with its turn limit until the learner
announces its last version, then with the spec's rules, on a fresh run and on a resumed one."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import pytest
import trio

from engine.actor import ConfigError
from engine.cluster import Head
from engine.episode import Rules
from engine.spec import ClusterSpec, parse_spec
from protocols import WeightsAvailable

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = (ROOT / "engine" / "default.toml").read_text()


def add_warmup(text: str, spec: str = DEFAULT) -> str:
    return spec.replace("[scheduler]\n", f"[scheduler]\n{text}\n", 1)


def with_warmup(text: str) -> ClusterSpec:
    return parse_spec(add_warmup(text))


@dataclass
class FakeHub:
    broadcast: list[int] = field(default_factory=list)

    def broadcast_weights(self, msg: WeightsAvailable) -> None:
        self.broadcast.append(msg.version)


@dataclass
class FakeScheduler:
    rules: Rules


def head_for(spec: ClusterSpec, start: Rules) -> tuple[Head, FakeScheduler, FakeHub]:
    hub = FakeHub()
    head = Head(spec, Path("."), hub, down=trio.Event())  # type: ignore[arg-type]
    scheduler = FakeScheduler(start)
    head.scheduler = scheduler  # type: ignore[assignment]
    return head, scheduler, hub


def test_the_turn_limit_lifts_at_the_warmup_s_last_version() -> None:
    spec = with_warmup("warmup = { versions = 3, max_turns = 1 }")
    warm = msgspec.structs.replace(spec.rules, max_turns=1)
    head, scheduler, hub = head_for(spec, warm)
    for version in (1, 2):
        head.new_version(WeightsAvailable(version, "tcp://learner:1"))
        assert scheduler.rules.max_turns == 1
    head.new_version(WeightsAvailable(3, "tcp://learner:1"))
    assert scheduler.rules == spec.rules and spec.rules.max_turns == 4
    # A learner restarted from an older checkpoint does not bring the warm-up back.
    head.new_version(WeightsAvailable(1, "tcp://learner:2"))
    assert scheduler.rules == spec.rules
    assert hub.broadcast == [1, 2, 3, 1]


def test_a_run_resumed_past_the_warmup_starts_with_the_full_rules() -> None:
    spec = with_warmup("warmup = { versions = 3 }")
    warm = msgspec.structs.replace(spec.rules, max_turns=1)
    head, scheduler, _ = head_for(spec, warm)
    head.end_warmup()
    assert scheduler.rules.max_turns == 1  # no version announced yet
    head.new_version(WeightsAvailable(40, "tcp://learner:1"))
    assert scheduler.rules == spec.rules


@pytest.mark.parametrize(
    "text, message",
    [
        ("warmup = { versions = -1 }", "versions must be >= 0"),
        ("warmup = { versions = 10, max_turns = 0 }", "max_turns between 1 and"),
        ("warmup = { versions = 10, max_turns = 5 }", "max_turns between 1 and"),
        ("warmup = { version = 10 }", "unknown field `version`"),
    ],
)
def test_bad_warmups_fail_clearly(text: str, message: str) -> None:
    with pytest.raises((ConfigError, ValueError), match=message):
        with_warmup(text)


def test_a_warmup_needs_a_learner() -> None:
    text = add_warmup("warmup = { versions = 5 }", DEFAULT.split("[learner]")[0])
    with pytest.raises((ConfigError, ValueError), match="needs a \\[learner\\]"):
        parse_spec(text)
