"""The action space and constrained decoding over it: a token trie of every valid action.

An action is a complete native-dialect string (`<diagnosis>asthma</diagnosis>`, `<exam>sodium
</exam>`, `<ask>Have you had a fever?</ask>`). Decoding walks the trie from its root: at each
step only the children of the current node may be sampled, so every completion the agent
produces parses, and a node with one child is a forced token (log-probability 0). The learner
calls `mask()` to recompute exactly the distribution the agent sampled from.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from protocols.dialects import get_dialect
from protocols.messages import AskPatient, Diagnose, OrderExam

if TYPE_CHECKING:
    import torch

__all__ = ["KINDS", "ActionGrammar", "action_strings", "kind_of"]

KINDS = ("diagnosis", "exam", "ask")


def kind_of(action: str) -> str:
    """`diagnosis`, `exam` or `ask`, from the opening tag of an action string."""
    for kind in KINDS:
        if action.startswith(f"<{kind}>"):
            return kind
    raise ValueError(f"not an action string: {action!r}")


@functools.cache
def action_strings(corpus_cases: int, corpus_seed: int, exams: int) -> tuple[str, ...]:
    """Every valid completion: the bank's diagnoses, the catalogue exams (or the `exams` most
    used key exams of the corpus cases), and a fixed question list; checked to parse back."""
    from actors.agent import GENERAL_QUESTIONS
    from cases.bank import CONDITIONS, builtin
    from cases.catalogue import default_catalogue
    from cases.symptoms import SYMPTOMS, question_for

    diagnoses = [c.name for c in CONDITIONS]
    if exams:
        counts = collections.Counter(
            k for case in builtin(corpus_cases, corpus_seed) for k in case.key_exams
        )
        exam_names = [n for n, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
        exam_names = exam_names[:exams]
    else:
        exam_names = [e.name for e in default_catalogue().entries]
    questions = list(dict.fromkeys([*GENERAL_QUESTIONS, *(question_for(s) for s in SYMPTOMS)]))
    out = [
        *(f"<diagnosis>{n}</diagnosis>" for n in diagnoses),
        *(f"<exam>{n}</exam>" for n in exam_names),
        *(f"<ask>{q}</ask>" for q in questions),
    ]
    _check_parse(out)
    if len(set(out)) != len(out):
        raise ValueError("duplicate action strings")
    return tuple(out)


def _check_parse(actions: Iterable[str]) -> None:
    native = get_dialect("native")
    for text in actions:
        action = native.parse(text)
        kind = kind_of(text)
        body = text[len(kind) + 2 : -(len(kind) + 3)]
        ok = (
            (kind == "diagnosis" and isinstance(action, Diagnose) and action.name == body)
            or (kind == "exam" and isinstance(action, OrderExam) and action.names == [body])
            or (kind == "ask" and isinstance(action, AskPatient) and action.question == body)
        )
        if not ok:
            raise ValueError(f"action {text!r} does not parse back in the native dialect")


class ActionGrammar:
    """A trie over the token sequences of `actions`; `allowed` and `mask` walk it."""

    def __init__(self, actions: Sequence[str], sequences: Sequence[Sequence[int]], vocab: int):
        if len(actions) != len(sequences) or not actions:
            raise ValueError("ActionGrammar needs one token sequence per action, and some actions")
        self.actions: list[str] = list(actions)
        self.sequences: list[tuple[int, ...]] = [tuple(s) for s in sequences]
        self.vocab = vocab
        # node 0 is the root; children[node] maps token -> node; leaf[node] is an action index
        self._children: list[dict[int, int]] = [{}]
        self._leaf: dict[int, int] = {}
        for index, seq in enumerate(self.sequences):
            if not seq:
                raise ValueError(f"action {actions[index]!r} has no tokens")
            node = 0
            for tok in seq:
                if not 0 <= tok < vocab:
                    raise ValueError(f"token {tok} of {actions[index]!r} is outside the vocab")
                if node in self._leaf:
                    raise ValueError(f"{self.actions[self._leaf[node]]!r} prefixes another action")
                nxt = self._children[node].get(tok)
                if nxt is None:
                    nxt = len(self._children)
                    self._children[node][tok] = nxt
                    self._children.append({})
                node = nxt
            if node in self._leaf or self._children[node]:
                raise ValueError(f"action {actions[index]!r} is a prefix of (or equal to) another")
            self._leaf[node] = index
        self.max_len = max(len(s) for s in self.sequences)
        self._masks: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.actions)

    # --- walking ------------------------------------------------------------------------------

    def node(self, prefix: Sequence[int]) -> int:
        """The trie node a completion prefix leads to; `ValueError` if no action starts so."""
        node = 0
        for i, tok in enumerate(prefix):
            nxt = self._children[node].get(int(tok))
            if nxt is None:
                raise ValueError(f"token {tok} at position {i} continues no action")
            node = nxt
        return node

    def step(self, node: int, token: int) -> int:
        nxt = self._children[node].get(token)
        if nxt is None:
            raise ValueError(f"token {token} continues no action")
        return nxt

    def children(self, node: int) -> list[int]:
        return list(self._children[node])

    def is_complete(self, node: int) -> bool:
        return node in self._leaf

    def allowed(self, prefix: Sequence[int]) -> list[int]:
        """Token ids allowed after this completion prefix; empty once the action is complete."""
        return self.children(self.node(prefix))

    def node_mask(self, node: int) -> torch.Tensor:
        """[vocab] bool, cached per node."""
        m = self._masks.get(node)
        if m is None:
            import torch

            m = torch.zeros(self.vocab, dtype=torch.bool)
            kids = self.children(node)
            if kids:
                m[torch.tensor(kids)] = True
            self._masks[node] = m
        return m

    def mask(self, completion: Sequence[int]) -> torch.Tensor:
        """[len(completion), vocab] bool: the tokens allowed at each position of `completion`.

        Raises `ValueError` when the completion leaves the grammar or runs past a complete
        action."""
        import torch

        rows = []
        node = 0
        for i, tok in enumerate(completion):
            if self.is_complete(node):
                raise ValueError(f"completion continues past a complete action at position {i}")
            rows.append(self.node_mask(node))
            node = self.step(node, int(tok))
        if not rows:
            return torch.zeros((0, self.vocab), dtype=torch.bool)
        return torch.stack(rows)

    def action_of(self, completion: Sequence[int]) -> str:
        """The action string a complete completion spells; `ValueError` if it is not complete."""
        node = self.node(completion)
        if node not in self._leaf:
            raise ValueError("the completion is not a complete action")
        return self.actions[self._leaf[node]]

    # --- sub-grammars ---------------------------------------------------------------------------

    def restrict(self, keep: Callable[[str], bool] | Iterable[str]) -> ActionGrammar:
        """The grammar of the actions `keep` accepts (a predicate, or kinds such as
        `("diagnosis",)`); same vocabulary and token sequences."""
        if callable(keep):
            pred = keep
        else:
            kinds = frozenset(keep)
            unknown = kinds - set(KINDS)
            if unknown:
                raise ValueError(f"unknown action kinds {sorted(unknown)}; known: {KINDS}")

            def pred(a: str) -> bool:
                return kind_of(a) in kinds

        pairs = [(a, s) for a, s in zip(self.actions, self.sequences, strict=True) if pred(a)]
        if not pairs:
            raise ValueError("the restriction keeps no action")
        return ActionGrammar([a for a, _ in pairs], [s for _, s in pairs], self.vocab)
