"""The action space and constrained decoding over it: a token trie of every valid action.

An action is a complete native-dialect string (`<diagnosis>asthma</diagnosis>`, `<exam>sodium
</exam>`, `<ask>Have you had a fever?</ask>`). Decoding walks the trie from its root: at each
step only the children of the current node may be sampled, so every completion the agent
produces parses, and a node with one child is a forced token (log-probability 0). The learner
calls `mask()` to recompute exactly the distribution the agent sampled from.

With exam lists (`max_exams > 1`, one token per exam action), an exam order is a list: the
tokens of one to `max_exams` exam actions, then an end token, spelling `<exam>a; b</exam>` as
the clinician orders. A list's nodes are its length so far (an exam may come again: the episode
orders it once), so every node's mask is still fixed and cached.
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

__all__ = ["END", "KINDS", "ActionGrammar", "action_strings", "kind_of"]

KINDS = ("diagnosis", "exam", "ask")
END = "<|end|>"  # the token that ends a list of exams


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
    """A trie over the token sequences of `actions`; `allowed` and `mask` walk it.

    `max_exams > 1` makes exam orders lists ended by the token `end` (see the module doc)."""

    def __init__(
        self,
        actions: Sequence[str],
        sequences: Sequence[Sequence[int]],
        vocab: int,
        *,
        max_exams: int = 1,
        end: int | None = None,
    ):
        if len(actions) != len(sequences) or not actions:
            raise ValueError("ActionGrammar needs one token sequence per action, and some actions")
        self.actions: list[str] = list(actions)
        self.sequences: list[tuple[int, ...]] = [tuple(s) for s in sequences]
        self.vocab = vocab
        self.max_exams = max_exams
        self.end = end
        lists = max_exams > 1
        self._exam_names: dict[int, str] = {}  # exam token -> name, with lists
        if lists:
            if end is None or not 0 <= end < vocab:
                raise ValueError("exam lists need an end token inside the vocab")
            for text, seq in zip(self.actions, self.sequences, strict=True):
                if kind_of(text) == "exam":
                    if len(seq) != 1:
                        raise ValueError(f"exam lists need one token per exam action: {text!r}")
                    self._exam_names[seq[0]] = text[len("<exam>") : -len("</exam>")]
            if end in self._exam_names or any(end in seq for seq in self.sequences):
                raise ValueError("the end token is also an action's token")
        elif max_exams < 1:
            raise ValueError("max_exams must be >= 1")
        # node 0 is the root; children[node] maps token -> node; leaf[node] is an action index
        # (-1: a complete exam list)
        self._children: list[dict[int, int]] = [{}]
        self._leaf: dict[int, int] = {}
        for index, seq in enumerate(self.sequences):
            if lists and seq and seq[0] in self._exam_names:
                continue  # below: exam tokens lead into the list nodes
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
        if lists and self._exam_names:
            # list node first + k holds k + 1 exams; `done` is a complete list
            first, done = len(self._children), len(self._children) + max_exams
            self._children.extend({} for _ in range(max_exams + 1))
            for tok in self._exam_names:
                self._children[0][tok] = first
            for k in range(max_exams):
                node = first + k
                if k + 1 < max_exams:
                    self._children[node] = dict.fromkeys(self._exam_names, node + 1)
                self._children[node][end] = done  # type: ignore[index]
            self._leaf[done] = -1
        self._exam_tokens = {name: tok for tok, name in self._exam_names.items()}
        self.max_len = max(
            max(len(s) for s in self.sequences), max_exams + 1 if self._exam_names else 1
        )
        self._masks: dict[int, torch.Tensor] = {}
        self._index: dict[str, int] | None = None  # action string -> index, built on first use

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
        index = self._leaf[node]
        if index < 0:  # an exam list: its exams, in order
            names = [self._exam_names[int(t)] for t in completion[:-1]]
            return f"<exam>{'; '.join(names)}</exam>"
        return self.actions[index]

    def encode(self, action: str) -> list[int] | None:
        """The completion that spells `action` (a string as `action_of` gives), or None when the
        grammar cannot express it; an exam order with lists is its exams' tokens + the end."""
        if self.max_exams > 1 and action.startswith("<exam>") and action.endswith("</exam>"):
            names = action[len("<exam>") : -len("</exam>")].split("; ")
            if not 1 <= len(names) <= self.max_exams:
                return None
            if any(name not in self._exam_tokens for name in names):
                return None
            return [*(self._exam_tokens[name] for name in names), self.end]  # type: ignore[list-item]
        if self._index is None:
            self._index = {a: i for i, a in enumerate(self.actions)}
        i = self._index.get(action)
        return None if i is None else list(self.sequences[i])

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
        lists = self.max_exams if any(kind_of(a) == "exam" for a, _ in pairs) else 1
        return ActionGrammar(
            [a for a, _ in pairs],
            [s for _, s in pairs],
            self.vocab,
            max_exams=lists,
            end=self.end if lists > 1 else None,
        )
