"""Cheap actors for cluster tests, named in test specs as `tests.cluster_actors:X`."""

from __future__ import annotations

import msgspec

from engine.actor import Actor, handles
from protocols import ActReply, ActRequest, Case, ExamQuery, PatientQuestion, ScoreRequest
from tests.fakes import answer, tiny_case


class SlowConfig(msgspec.Struct, forbid_unknown_fields=True):
    delay_s: float = 0.0


class FakePatient(Actor):
    service = "patient"

    @handles(PatientQuestion)
    def answer(self, request: PatientQuestion) -> object:
        return answer(self.service, request)


class FakeExaminer(Actor):
    """Answers after `delay_s` so that a test can kill it with requests in flight."""

    service = "examiner"
    Config = SlowConfig

    @handles(ExamQuery)
    async def result(self, request: ExamQuery) -> object:
        import trio

        await trio.sleep(self.config.delay_s)
        return answer(self.service, request)


class FakeAgent(Actor):
    service = "agent"

    @handles(ActRequest)
    def act(self, request: ActRequest) -> ActReply:
        return answer(self.service, request)


class FakeJudge(Actor):
    service = "judge"

    @handles(ScoreRequest)
    def score(self, request: ScoreRequest) -> object:
        return answer(self.service, request)


def cases(n: int = 20) -> list[Case]:
    return [tiny_case(i) for i in range(n)]
