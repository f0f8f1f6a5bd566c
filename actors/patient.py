"""Patients: answer the agent's questions about the case's history, never naming the diagnosis.

`RecordPatient` (`actors.patient:RecordPatient`, the embedded default) answers from the case's
structured history with progressive disclosure: a question is split into its parts ("Any
allergies, and what medications do you take?" has two; "Do you smoke or drink?" names two social
topics), each part is matched to one part of the history (age, sex, chief complaint, onset, past
history, medications, allergies, family, social) or to the symptoms (DDXPlus-style evidences
included) it names, and only that is answered, in the first person. A symptom the case lists as
absent, or one it does not list, is denied; a question that matches nothing gets an "I'm not sure
what you mean" answer. Patients do not know their test results: a question about a lab value, an
image or a culture gets "I don't know" (the Examiner holds the results). The patient never names
the diagnosis: questions about it are deflected, and every reply is scanned and redacted
(`leaked=True` when a redaction was needed).

With the DDXPlus ontology configured (`ddxplus = "<folder>"`, off by default), a question that
matches a DDXPlus evidence question ("Do you have a fever (either felt or measured with a
thermometer)?", "Characterize your pain:"; plus a few everyday phrasings of the pain and travel
questions) by weighted word overlap is answered as that evidence: from the evidence values of a
case built from DDXPlus evidences (`cases.loaders.ddxplus.case_from_evidences`; categorical and
multi-choice answers given by their English meanings, absent evidences denied), or, for other
cases, through `EVIDENCE_SYMPTOMS` / `EVIDENCE_SOCIAL` / `PAIN_EVIDENCES` (DDXPlus evidence ->
the symptom vocabulary or social history with the same meaning). The same table answers everyday
symptom questions ("Any fever?", "Do you smoke?") for DDXPlus cases. The matching is
conservative: a question close to no evidence question, or to two, falls through to the rules above.

`LLMPatient` (`actors.patient:LLMPatient`) role-plays through an OpenAI-compatible chat endpoint
from the profile only; see its docstring.
"""

from __future__ import annotations

import functools
import math
import re

import msgspec
import structlog

from actors.openai_api import EndpointConfig, LLMError, UsesEndpoint
from cases.bank import CONDITIONS, condition_terms
from cases.loaders.ddxplus import DDXPlusOntology, Evidence
from cases.symptoms import SYMPTOMS, find_symptoms
from cases.text import contains_phrase, redact, stems
from engine.actor import Actor, ActorError, ConfigError, handles
from protocols import ErrorCode
from protocols.case import Case, Symptom
from protocols.messages import PatientQuestion, PatientReply

__all__ = [
    "EVIDENCE_SOCIAL",
    "EVIDENCE_SYMPTOMS",
    "EvidenceIndex",
    "LLMPatient",
    "LLMPatientConfig",
    "RecordPatient",
    "RecordPatientConfig",
    "answer_question",
    "diagnosis_terms",
    "leak_terms",
    "split_question",
]

log = structlog.get_logger("actors.patient")

UNCLEAR = "I'm sorry, I'm not sure what you mean. Could you ask me that another way?"
DEFLECT = (
    "I really don't know what's causing it, doctor. That's what I was hoping you could tell me."
)
NOTHING_LIKE_THAT = "No, I haven't noticed anything like that."
NO_RESULTS = "I don't know anything about test results, doctor. You'd have to check those."


def _keys(*words: str) -> frozenset[str]:
    return frozenset(stems(" ".join(words)))


_ALLERGY = _keys("allergy allergies allergic allergen reaction reactions intolerant")
_FAMILY = _keys(
    "family mother father mom mum dad parent parents sibling siblings brother brothers sister "
    "sisters relative relatives grandparents grandmother grandfather hereditary genetic inherited"
)
_MEDICATION = _keys(
    "medication medications medicine medicines meds pill pills tablet tablets prescription "
    "prescriptions prescribed inhaler inhalers insulin supplements"
)
_DRUG_WORDS = _keys("drug drugs")
_RECREATIONAL = _keys("recreational illicit illegal street cannabis marijuana cocaine heroin weed")
_PAST = _keys(
    "history medical diagnosed condition conditions illness illnesses surgery surgeries "
    "operation operations hospitalized hospitalised admitted chronic"
)
_DIAGNOSIS_Q = _keys("diagnosis diagnose cause causing caused")
_AGE = _keys("age old born birthday")
_SEX = _keys("gender male female man woman")
_ONSET = _keys("when long start started starting begin began beginning onset since duration first")
_COMPLAINT = _keys(
    "brings brought bring problem problems trouble complaint complaints wrong help matter happened "
    "concern concerns describe symptom symptoms today feeling tell going visit"
)
_YESNO_STARTS = (
    ("do", "you"),
    ("have", "you"),
    ("are", "you"),
    ("did", "you"),
    ("any",),
    ("is", "there"),
    ("does", "it"),
    ("has", "there"),
)
_STOP = _keys(
    "a an the and or of to in on at for with about any anything some your you i me my is are was "
    "were be been have has had do does did can could would will please tell ever been there it "
    "this that what how when where which who why feel feeling noticed notice experienced "
    "experiencing get got having recently lately currently now today doctor okay ok so also"
)

# social topics: name, question keywords, keywords that mark a matching history item, the default
_SOCIAL_TOPICS: tuple[tuple[str, frozenset[str], tuple[str, ...], str], ...] = (
    (
        "smoking",
        _keys("smoke smoking smoker smokers cigarette cigarettes tobacco vape vaping cigar"),
        ("smok", "cigar", "tobacco", "pack"),
        "No, I don't smoke.",
    ),
    (
        "alcohol",
        _keys("alcohol drink drinks drinking drinker beer beers wine spirits booze"),
        ("drink", "alcohol", "beer", "wine", "spirits"),
        "I don't really drink.",
    ),
    (
        "drugs",
        _RECREATIONAL,
        ("cannabis", "cocaine", "drugs", "heroin"),
        "No, I don't use any recreational drugs.",
    ),
    (
        "work",
        _keys(
            "work job jobs occupation employed employment profession retired student living career"
        ),
        ("I work", "I'm a", "I'm an", "I'm retired", "I drive", "student"),
        "I'd rather not go into my work, it isn't relevant.",
    ),
    (
        "travel",
        _keys(
            "travel travelled traveled traveling travelling trip trips abroad flight flights "
            "flew holiday vacation overseas"
        ),
        ("flight", "travel", "trip", "abroad", "holiday"),
        "No, I haven't travelled anywhere recently.",
    ),
    (
        "diet",
        _keys("diet eat eats food foods vegetarian vegan coffee caffeine"),
        ("vegetarian", "vegan", "coffee", "eat"),
        "I eat a fairly normal diet.",
    ),
    (
        "contacts",
        _keys("contact contacts sick ill unwell exposed exposure household outbreak"),
        ("people at my", "kids", "tested positive", "same illness", "off school"),
        "Not that I know of.",
    ),
    (
        "outdoors",
        _keys(
            "outdoors outdoor hiking hike camping camp woods forest garden gardening pets pet "
            "animal animals cat cats dog dogs"
        ),
        ("camping", "hiking", "woods", "cat", "dog"),
        "Nothing unusual there.",
    ),
    (
        "home",
        _keys("live lives living home alone partner married spouse husband wife"),
        ("I live",),
        "I live at home.",
    ),
    (
        "sexual",
        _keys("sexual sexually sex partners"),
        (),
        "Nothing unusual there; I'm in a steady relationship.",
    ),
)
_SOCIAL_GENERIC = _keys("social lifestyle habits habit routine")

_ONSET_RE = re.compile(
    r"\bfor ((?:about |around |roughly |nearly |almost |a few |several |the (?:past|last) )?"
    r"(?:\d+|a|an|one|two|three|four|five|six|seven|eight|nine|ten|a couple of)?\s*"
    r"(?:hours?|days?|weeks?|months?|years?))\b",
    re.IGNORECASE,
)


@functools.cache
def _bank_terms() -> dict[str, tuple[str, ...]]:
    return {c.name: condition_terms(c) for c in CONDITIONS}


@functools.cache
def _all_condition_terms() -> tuple[str, ...]:
    return tuple(t for terms in _bank_terms().values() for t in terms)


def diagnosis_terms(case: Case) -> tuple[str, ...]:
    """Every name of the case's diagnosis the patient must never say."""
    terms = [case.diagnosis.name, *case.diagnosis.synonyms]
    terms.extend(_bank_terms().get(case.diagnosis.name, ()))
    return tuple(dict.fromkeys(t for t in terms if t.strip()))


def _sentence(text: str) -> str:
    text = text.strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _bare(noun: str) -> str:
    for article in ("any ", "a "):
        if noun.startswith(article):
            return noun[len(article) :]
    return noun


def _onset(case: Case) -> str:
    m = _ONSET_RE.search(case.profile.history_of_present_illness)
    return m.group(1) if m else ""


def _canonical(sym: Symptom) -> str:
    if sym.name in SYMPTOMS:
        return sym.name
    found = find_symptoms(sym.name)
    return found[0] if found else sym.name


def _symptom_reply(name: str, sym: Symptom | None) -> str:
    info = SYMPTOMS.get(name)
    if sym is not None and sym.present:
        detail = sym.detail.strip().rstrip(".")
        if detail:
            if not detail.startswith(("I ", "I'")):
                detail = detail[0].lower() + detail[1:]
            return f"Yes, {detail}."
        noun = _bare(info.noun) if info else sym.name
        return f"Yes, I've had {noun}."
    if info is not None:
        return f"No, I haven't had {info.noun}."
    return f"No, I haven't had {sym.name if sym else name}."


_PART_SPLIT = re.compile(
    r"[?!;]+|\.(?:\s+|$)|,?\s+and\s+(?=(?:do|does|did|are|is|was|were|have|has|"
    r"had|what|when|how|any|where|which|who|why|can|could|would|tell)\b)",
    re.IGNORECASE,
)
_RESULT_WORDS = _keys(
    "result results level levels value values reading readings lab labs bloodwork test tests "
    "tested scan scans xray x-ray imaging culture cultures count"
)


def split_question(question: str) -> list[str]:
    """The parts of a multi-part question: sentences, and clauses joined by "and" + a question
    word ("How old are you and when did it start?"). "A or B" stays one part."""
    return [p.strip() for p in _PART_SPLIT.split(question) if p and p.strip()]


def answer_question(case: Case, question: str, evidence: EvidenceIndex | None = None) -> str:
    """The patient's reply before redaction (pure function of the case and the question; with
    `evidence`, DDXPlus evidence questions are recognised too).

    Each part of a multi-part question is answered on its own; parts that match nothing are
    dropped when another part matched, and repeated sentences are said once (but a short "No, I
    don't." that answers two different evidence questions is said twice).
    """
    record = evidence.record(case) if evidence is not None else None
    parts = split_question(question)
    if len(parts) <= 1:
        return _answer_part(case, question, evidence, record)[1]
    replies = [_answer_part(case, p, evidence, record) for p in parts]
    known = dict((key, r) for key, r in replies if r != UNCLEAR)
    return " ".join(known.values()) if known else UNCLEAR


@functools.cache
def _exam_terms() -> tuple[str, ...]:
    """Names and aliases of the catalogue's tests (not the physical examination)."""
    from cases.catalogue import default_catalogue
    from cases.symptoms import symptom_phrases

    phrases = list(symptom_phrases())
    terms: list[str] = []
    for e in default_catalogue().entries:
        if e.category == "physical":
            continue
        for t in (e.name, *e.aliases):
            toks = stems(t)
            if len("".join(toks)) < 3 or any(contains_phrase(p, toks) for p in phrases):
                continue  # too short to be safe, or inside a symptom's name ("FIT" in "fits")
            terms.append(t)
    return tuple(dict.fromkeys(terms))


_PhraseTable = dict[str, tuple[tuple[str, ...], ...]]


def _phrase_table(terms: tuple[str, ...]) -> _PhraseTable:
    """First stem -> the stemmed terms starting with it, longest first (fast whole-word search)."""
    table: dict[str, list[tuple[str, ...]]] = {}
    for t in terms:
        toks = tuple(stems(t))
        if toks:
            table.setdefault(toks[0], []).append(toks)
    return {k: tuple(sorted(set(v), key=len, reverse=True)) for k, v in table.items()}


@functools.cache
def _exam_phrases() -> _PhraseTable:
    return _phrase_table(_exam_terms())


@functools.cache
def _condition_phrases() -> _PhraseTable:
    return _phrase_table(_all_condition_terms())


def _spans(tokens: list[str], table: _PhraseTable) -> list[tuple[int, int]]:
    """(start, end) of every term of `table` in `tokens`, longest match first, left to right."""
    spans: list[tuple[int, int]] = []
    i = 0
    while i < len(tokens):
        for phrase in table.get(tokens[i], ()):
            if tuple(tokens[i : i + len(phrase)]) == phrase:
                spans.append((i, i + len(phrase)))
                i += len(phrase)
                break
        else:
            i += 1
    return spans


def _test_spans(tokens: list[str]) -> list[tuple[int, int]]:
    return _spans(tokens, _exam_phrases())


def _without_tests(question: str) -> str:
    """The question with test names removed: "sputum culture" does not ask about sputum."""
    tokens = stems(question)
    spans = _test_spans(tokens)
    if not spans:
        return question
    drop = {i for a, b in spans for i in range(a, b)}
    return " ".join(t for i, t in enumerate(tokens) if i not in drop)


def _asks_about_tests(question: str, tset: set[str]) -> bool:
    return bool(tset & _RESULT_WORDS) or bool(_test_spans(stems(question)))


def _answer_part(
    case: Case,
    question: str,
    evidence: EvidenceIndex | None = None,
    record: dict[str, list[str]] | None = None,
) -> tuple[str, str]:
    """(what was answered, the reply): the key folds repeated answers in multi-part questions."""
    if evidence is not None:
        ev = evidence.match(question)
        if ev is not None:
            if record is not None:
                return ev.code, _evidence_reply(ev, record.get(ev.code))
            reply = _bank_evidence_reply(case, ev)
            if reply:
                return ev.code, reply
    if evidence is not None and record is not None:
        case = _without_evidence_text(case, evidence, record)
    reply = _answer_rules(case, question, evidence, record)
    return reply, reply


def _answer_rules(
    case: Case,
    question: str,
    evidence: EvidenceIndex | None,
    record: dict[str, list[str]] | None,
) -> str:
    tokens = stems(question)
    if not tokens:
        return UNCLEAR
    tset = set(tokens)
    profile = case.profile
    content = [t for t in tokens if t not in _STOP]

    # 1. allergies, family, medications: explicit history sections
    if tset & _ALLERGY:
        if profile.allergies:
            return f"Yes, I'm allergic to {_join(profile.allergies)}."
        return "No, I don't have any allergies that I know of."
    if tset & _FAMILY:
        if profile.family_history:
            return _sentence(_join(profile.family_history))
        return "No, nothing runs in my family that I know of."
    if (tset & _MEDICATION) or ((tset & _DRUG_WORDS) and not (tset & _RECREATIONAL)):
        if profile.medications:
            return f"I take {_join(profile.medications)}."
        return "I don't take any regular medications."

    # 2. symptoms the question names
    named = find_symptoms(_without_tests(question))
    if named and not (tset & _PAST and not _is_yes_no(tokens)):
        by_name = _symptoms_by_name(case)
        replies = []
        for n in named:
            mapped = None
            if evidence is not None and record is not None:
                mapped = _ddx_symptom_reply(evidence, record, n)
            replies.append(mapped or _symptom_reply(n, by_name.get(n)))
        return " ".join(replies)

    # 2b. a DDXPlus case's social history, from its evidences ("Do you smoke?")
    if evidence is not None and record is not None:
        social = _ddx_topic_reply(evidence, record, tset)
        if social:
            return social

    # 3. past medical history (specific item, or the whole list)
    if tset & _PAST or (_is_yes_no(tokens) and _mentions_past_item(case, content)):
        return _past_reply(case, content)

    # 4. the diagnosis itself, or any condition by name: deflect
    if tset & _DIAGNOSIS_Q or _names_condition(question):
        return DEFLECT

    # 5. social history
    social = _social_reply(case, tset)
    if social:
        return social

    # 6. test results: the patient does not know them (the Examiner does)
    if _asks_about_tests(question, tset):
        return NO_RESULTS

    # 7. demographics, onset, complaint
    if tset & _AGE and ("old" in tset or "age" in tset or "born" in tset):
        return f"I'm {profile.demographics.age} years old."
    if tset & _SEX:
        sex = profile.demographics.sex
        return {"female": "I'm a woman.", "male": "I'm a man."}.get(sex, f"I'm {sex}.")
    onset = _onset(case)
    if tset & _ONSET:
        if onset:
            return f"It started {onset} ago."
        return "I'm not exactly sure when it started, a little while ago."
    if tset & _COMPLAINT:
        return _complaint_reply(case, onset)

    # 8. free-text symptom names of cases from other sources, or a generic word like "pain"
    overlap = _present_by_words(case, content)
    if overlap is not None:
        return _symptom_reply(_canonical(overlap), overlap)
    if _is_yes_no(tokens) and content:
        return NOTHING_LIKE_THAT
    return UNCLEAR


def _is_yes_no(tokens: list[str]) -> bool:
    return any(tuple(tokens[: len(p)]) == p for p in _YESNO_STARTS)


def _names_condition(question: str) -> bool:
    return bool(_spans(stems(question), _condition_phrases()))


def _mentions_past_item(case: Case, content: list[str]) -> bool:
    items = [*case.profile.past_history, *case.profile.medications]
    words = {w for item in items for w in stems(item) if w not in _STOP}
    return any(w in words for w in content)


def _past_reply(case: Case, content: list[str]) -> str:
    past = case.profile.past_history
    generic = _keys("history medical condition conditions illness illnesses problems chronic past")
    specific = [w for w in content if w not in generic and w not in _PAST]
    if specific:
        hits = [item for item in past if set(stems(item)) & set(specific)]
        if hits:
            return f"Yes, I've had {_join(hits)}."
        return "No, I haven't had anything like that before."
    if past:
        return f"I've had {_join(past)}."
    return "I've been healthy, I don't have any medical problems."


def _social_reply(case: Case, tset: set[str]) -> str:
    social = case.profile.social_history
    if tset & _SOCIAL_GENERIC:
        return " ".join(_sentence(s) for s in social) if social else "Nothing special to mention."
    answers: list[str] = []  # every topic the question names ("Do you smoke or drink?")
    for name, keys, _, _ in _SOCIAL_TOPICS:
        if tset & keys:
            answers.extend(_topic_sentences(case, name))
    return " ".join(dict.fromkeys(answers))


def _topic_sentences(case: Case, topic: str) -> list[str]:
    """What the case's social history says about one topic, or the topic's default answer."""
    for name, _, markers, default in _SOCIAL_TOPICS:
        if name == topic:
            social = case.profile.social_history
            told = [_sentence(s) for s in social if any(_has_marker(s, m) for m in markers)]
            return told or [default]
    raise KeyError(topic)


def _has_marker(text: str, marker: str) -> bool:
    return re.search(r"(?<![a-z])" + re.escape(marker.lower()), text.lower()) is not None


def _complaint_reply(case: Case, onset: str) -> str:
    profile = case.profile
    text = f"I've come in because of {profile.chief_complaint}." if profile.chief_complaint else ""
    cc = find_symptoms(profile.chief_complaint)
    detail = next(
        (s.detail for s in profile.symptoms if s.present and s.detail and _canonical(s) in cc), ""
    )
    if detail:
        text += " " + _sentence(detail)
    elif onset:
        text += f" It started {onset} ago."
    return text.strip() or "I just haven't been feeling right."


def _present_by_words(case: Case, content: list[str]) -> Symptom | None:
    if not content:
        return None
    cset = set(content)
    for s in case.profile.symptoms:
        words = {w for w in stems(s.name) if w not in _STOP}
        if words and words <= cset:
            return s
    for s in case.profile.symptoms:
        if s.present and cset & {w for w in stems(s.name) if w not in _STOP}:
            return s
    return None


# --- DDXPlus evidences ---------------------------------------------------------------------------

# DDXPlus evidence -> the built-in vocabulary's symptoms with the same meaning (any present: yes).
# Only evidences whose meaning the vocabulary carries; narrower ones ("chest pain even at rest",
# "out of breath with minimal effort") are left out on purpose.
EVIDENCE_SYMPTOMS: dict[str, tuple[str, ...]] = {
    "E_91": ("fever",),
    "E_94": ("chills",),
    "E_201": ("cough",),
    "E_77": ("sputum",),
    "E_45": ("coughing up blood",),
    "E_66": ("shortness of breath",),
    "E_214": ("wheezing",),
    "E_220": ("pleuritic chest pain",),
    "E_57": ("pain radiating to the arm or jaw", "pain radiating to the back"),
    "E_155": ("palpitations",),
    "E_159": ("fainting",),
    "E_82": ("dizziness", "fainting"),
    "E_76": ("dizziness",),
    "E_148": ("nausea", "vomiting"),
    "E_211": ("vomiting",),
    "E_210": ("vomiting blood",),
    "E_51": ("diarrhea",),
    "E_140": ("black stools",),
    "E_179": ("blood in stool",),
    "E_173": ("heartburn",),
    "E_30": ("bloating",),
    "E_65": ("difficulty swallowing",),
    "E_161": ("loss of appetite",),
    "E_32": ("loss of appetite",),
    "E_162": ("weight loss",),
    "E_174": ("weight loss", "loss of appetite"),
    "E_96": ("weight gain",),
    "E_89": ("fatigue", "sleep problems"),
    "E_175": ("fatigue", "muscle aches"),
    "E_144": ("muscle aches",),
    "E_50": ("sweating",),
    "E_97": ("sore throat",),
    "E_181": ("runny nose",),
    "E_9": ("swollen glands",),
    "E_103": ("loss of smell or taste",),
    "E_212": ("hoarse voice",),
    "E_129": ("rash", "skin redness"),
    "E_154": ("pale skin",),
    "E_151": ("leg swelling", "joint swelling", "neck swelling"),
    "E_39": ("confusion",),
    "E_63": ("slurred speech",),
    "E_43": ("seizure",),
    "E_156": ("facial droop",),
    "E_176": ("one-sided weakness", "facial droop"),
    "E_177": ("numbness",),
    "E_16": ("excessive worry", "panic attacks"),
    "E_163": ("vaginal discharge",),
    "E_145": ("heavy periods",),
}
# DDXPlus evidence -> the social-history topic that answers it
EVIDENCE_SOCIAL: dict[str, str] = {
    "E_79": "smoking",
    "E_78": "alcohol",
    "E_204": "travel",
    "E_41": "contacts",
}
# "Do you feel pain somewhere?": answered from the vocabulary's pain symptoms
PAIN_EVIDENCES = ("E_55", "E_53")
# vocabulary symptoms that are pain in a DDXPlus pain location (E_55's values)
_PAIN_PLACES: dict[str, frozenset[str]] = {
    "headache": frozenset(
        ("forehead", "top of the head", "temple(R)", "temple(L)", "occiput", "back of head")
    ),
    "chest pain": frozenset(
        (
            "upper chest",
            "lower chest",
            "side of the chest(R)",
            "side of the chest(L)",
            "breast(R)",
            "breast(L)",
        )
    ),
    "abdominal pain": frozenset(
        (
            "epigastric",
            "belly",
            "hypochondrium(R)",
            "hypochondrium(L)",
            "iliac fossa(R)",
            "iliac fossa(L)",
        )
    ),
    "back pain": frozenset(("lumbar spine", "thoracic spine")),
}
# extra phrasings of a few evidence questions, matched like the questions themselves
_EVIDENCE_ALIASES: dict[str, tuple[str, ...]] = {
    "E_55": (
        "Where is the pain?",
        "Where does it hurt?",
        "Where do you feel the pain?",
        "Where is the pain located?",
        "Do you have any pain?",
    ),
    "E_56": (
        "How bad is the pain?",
        "How severe is the pain?",
        "How strong is the pain?",
        "Rate your pain from 0 to 10",
        "On a scale of 0 to 10 how bad is the pain?",
    ),
    "E_54": (
        "What does the pain feel like?",
        "Describe the pain",
        "What kind of pain is it?",
        "What is the pain like?",
    ),
    "E_57": (
        "Does the pain spread anywhere?",
        "Does the pain go anywhere else?",
        "Does the pain move anywhere?",
        "Does the pain radiate?",
    ),
    "E_152": ("Where is the swelling?",),
    "E_59": ("How quickly did the pain come on?", "Did the pain come on suddenly?"),
    "E_204": ("Have you travelled abroad recently?", "Have you been abroad?"),
}
# symptoms the vocabulary counts as pain
_PAIN_SYMPTOMS = tuple(
    n for n in SYMPTOMS if "pain" in n or "ache" in n or n in ("sore throat", "sore tongue")
)

_MATCH_STOP = _keys(
    "a an the and or of to in on at for with about any anything some your you i me my is are was "
    "were be been have has had do does did can could would will please tell ever there it this "
    "that feel feeling get got having recently lately currently now today doctor okay ok so also "
    "either"
)
_NO_VALUES = frozenset(("N", "NA", "nowhere"))
_MIN_QUESTION_COVER = 0.85  # share (by weight) of the question's words found in the evidence's
_MIN_EVIDENCE_COVER = 0.7  # share of the evidence question's words found in the question


def _root(token: str) -> str:
    """A rougher stem for matching only ("traveled", "travelled", "travelling" -> "travel")."""
    if len(token) > 5 and token.endswith("ing"):
        token = token[:-3]
    elif len(token) > 4 and token.endswith("ed"):
        token = token[:-2]
    elif len(token) > 4 and token.endswith("e"):
        token = token[:-1]
    if len(token) > 3 and token[-1] == token[-2] and token[-1] != "s":
        token = token[:-1]
    return token


def _match_words(text: str) -> frozenset[str]:
    return frozenset(_root(t) for t in stems(text) if t not in _MATCH_STOP)


_LEADS: tuple[tuple[str, str, str], ...] = (  # question start, yes, no
    ("do you", "Yes, I do.", "No, I don't."),
    ("have you", "Yes, I have.", "No, I haven't."),
    ("are you", "Yes, I am.", "No, I'm not."),
    ("did you", "Yes, I did.", "No, I didn't."),
    ("were you", "Yes, I was.", "No, I wasn't."),
    ("is your", "Yes, it is.", "No, it isn't."),
    ("is the", "Yes, it is.", "No, it isn't."),
    ("are your", "Yes, they are.", "No, they aren't."),
    ("do your", "Yes, they do.", "No, they don't."),
    ("does the pain", "Yes, it does.", "No, it doesn't."),
    ("in the last month, have you", "Yes, I have.", "No, I haven't."),
)


def _yes_no(ev: Evidence) -> tuple[str, str] | None:
    q = ev.question.lower()
    for lead, yes, no in _LEADS:
        if q.startswith(lead + " "):
            return yes, no
    if q.startswith(("have any", "do any", "are there", "does your mother", "do you have any fam")):
        return "Yes.", "No, not that I know of."
    if q.split(" ", 1)[0] in ("do", "does", "did", "is", "are", "have", "has", "were", "was"):
        return "Yes.", "No."
    return None


def _place(meaning: str) -> str:
    """ "temple(L)" -> "left temple"; "finger (index)(R)" -> "right finger (index)"."""
    for mark, side in (("(R)", "right"), ("(L)", "left")):
        if meaning.endswith(mark):
            return f"{side} {meaning[: -len(mark)].strip()}"
    return meaning


class EvidenceIndex:
    """The DDXPlus evidences, for matching free-text questions and reading a case's answers."""

    def __init__(self, ontology: DDXPlusOntology) -> None:
        self.ontology = ontology
        self._by_question = {e.question: e for e in ontology.evidences.values()}
        docs: list[tuple[str, frozenset[str]]] = []
        for e in ontology.evidences.values():
            for text in (e.question, *_EVIDENCE_ALIASES.get(e.code, ())):
                words = _match_words(text)
                if words:
                    docs.append((e.code, words))
        self._docs = docs
        df: dict[str, int] = {}
        for _, words in docs:
            for w in words:
                df[w] = df.get(w, 0) + 1
        n = len(docs)
        self._weight = {w: math.log(1 + n / c) for w, c in df.items()}
        self._unknown = math.log(1 + n)  # a word no evidence question has weighs the most
        self._symptom_codes: dict[str, list[str]] = {}
        for code, names in EVIDENCE_SYMPTOMS.items():
            if code in ontology.evidences:
                for name in names:
                    self._symptom_codes.setdefault(name, []).append(code)

    def _w(self, words: frozenset[str]) -> float:
        return sum(self._weight.get(w, self._unknown) for w in words)

    def match(self, question: str) -> Evidence | None:
        """The evidence whose question `question` asks, or None when none (or two) fit well."""
        q = _match_words(question)
        if not q:
            return None
        wq = self._w(q)
        scored: dict[str, float] = {}
        for code, words in self._docs:
            shared = self._w(q & words)
            if not shared:
                continue
            q_cover, e_cover = shared / wq, shared / self._w(words)
            if q_cover >= _MIN_QUESTION_COVER and e_cover >= _MIN_EVIDENCE_COVER:
                scored[code] = max(scored.get(code, 0.0), min(q_cover, e_cover))
        if not scored:
            return None
        ranked = sorted(scored.items(), key=lambda kv: -kv[1])
        if len(ranked) > 1 and ranked[1][1] >= ranked[0][1] - 0.05:
            return None  # two evidences fit about as well: do not guess
        return self.ontology.evidences[ranked[0][0]]

    def record(self, case: Case) -> dict[str, list[str]] | None:
        """A DDXPlus case's evidence answers (code -> English meanings, [] for a plain yes), read
        back from `case_from_evidences`' symptoms and past history; None for other cases."""
        found: dict[str, list[str]] = {}
        for s in case.profile.symptoms:
            ev = self._by_question.get(s.name)
            if ev is not None and s.present:
                found[ev.code] = [v for v in s.detail.split(", ") if v]
        for item in case.profile.past_history:
            for question, ev in self._by_question.items():
                if item.startswith(question + " ") or item == question:
                    rest = item[len(question) :].strip()
                    found[ev.code] = [v for v in rest.split(", ") if v and rest != "yes"]
                    break
        if not found and case.source != "ddxplus":
            return None
        return found

    def symptom_codes(self, name: str) -> list[str]:
        """The evidences that carry a vocabulary symptom (`EVIDENCE_SYMPTOMS` reversed)."""
        return self._symptom_codes.get(name, [])


def _evidence_reply(ev: Evidence, values: list[str] | None) -> str:
    """The answer to one evidence question from the case's values (None: the case lacks it)."""
    tags = _yes_no(ev)
    kept = [v for v in values or () if v not in _NO_VALUES]
    if values is None or (values and not kept):
        return tags[1] if tags else NOTHING_LIKE_THAT
    if not kept:  # a binary evidence, present
        return tags[0] if tags else "Yes."
    if ev.data_type == "C" and not ev.values:  # a 0-10 scale
        return f"I'd say {kept[0]} out of 10."
    if ev.data_type == "C" and kept == ["Y"]:
        return tags[0] if tags else "Yes."
    said = _join([_place(v) for v in kept])
    if tags:
        return f"{tags[0][:-1]}: {said}."
    return _sentence(said)


def _bank_evidence_reply(case: Case, ev: Evidence) -> str:
    """A DDXPlus evidence question answered from a case of the built-in vocabulary ("" when the
    mapping table does not cover it)."""
    if ev.code in EVIDENCE_SOCIAL:
        return " ".join(_topic_sentences(case, EVIDENCE_SOCIAL[ev.code]))
    if ev.code in PAIN_EVIDENCES:
        names = _PAIN_SYMPTOMS
    else:
        names = EVIDENCE_SYMPTOMS.get(ev.code, ())
    if not names:
        return ""
    by_name = _symptoms_by_name(case)
    present = [n for n in names if n in by_name and by_name[n].present]
    if present:
        return " ".join(_symptom_reply(n, by_name[n]) for n in present)
    if ev.code in PAIN_EVIDENCES:
        return "No, I haven't had any pain."
    nouns = [SYMPTOMS[n].noun if n in SYMPTOMS else n for n in names]
    return f"No, I haven't had {' or '.join(dict.fromkeys(nouns))}."


def _symptoms_by_name(case: Case) -> dict[str, Symptom]:
    by_name: dict[str, Symptom] = {}
    for s in case.profile.symptoms:
        by_name.setdefault(_canonical(s), s)
    return by_name


def _ddx_symptom_reply(index: EvidenceIndex, record: dict[str, list[str]], name: str) -> str | None:
    """A vocabulary symptom asked of a DDXPlus case, through the mapping table (None: unmapped)."""
    places = _PAIN_PLACES.get(name)
    if places is not None and "E_55" in index.ontology.evidences:
        hit = [v for v in record.get("E_55", ()) if v in places]
        detail = f"the pain is in my {_join([_place(v) for v in hit])}" if hit else ""
        return _symptom_reply(name, Symptom(name, bool(hit), detail))
    codes = index.symptom_codes(name)
    if not codes:
        return None
    present = any(c in record for c in codes)
    return _symptom_reply(name, Symptom(name, present))


def _without_evidence_text(case: Case, index: EvidenceIndex, record: dict[str, list[str]]) -> Case:
    """A DDXPlus case for the history rules: the antecedent evidences (questions, not history)
    leave the past history, and the chief complaint becomes the vocabulary's word for the first
    evidence (not its question)."""
    questions = [index.ontology.evidences[c].question for c in record]
    past = [p for p in case.profile.past_history if not any(p.startswith(q) for q in questions)]
    complaint = ""
    for code in record:
        if code in PAIN_EVIDENCES:
            complaint = "pain"
        elif EVIDENCE_SYMPTOMS.get(code):
            complaint = EVIDENCE_SYMPTOMS[code][0]
        if complaint:
            break
    profile = msgspec.structs.replace(case.profile, past_history=past, chief_complaint=complaint)
    return msgspec.structs.replace(case, profile=profile)


def _ddx_topic_reply(index: EvidenceIndex, record: dict[str, list[str]], tset: set[str]) -> str:
    """A social question ("Do you smoke?") asked of a DDXPlus case, through the mapping table."""
    replies = []
    for code, topic in EVIDENCE_SOCIAL.items():
        keys = next(k for n, k, _, _ in _SOCIAL_TOPICS if n == topic)
        if tset & keys and code in index.ontology.evidences:
            replies.append(_evidence_reply(index.ontology.evidences[code], record.get(code)))
    return " ".join(dict.fromkeys(replies))


def leak_terms(case: Case) -> tuple[str, ...]:
    """What a reply must not contain: the diagnosis' names (`diagnosis_terms`) and its ICD-10
    code, dotted and undotted ("J18.9", "J189")."""
    terms = list(diagnosis_terms(case))
    code = case.diagnosis.icd10.strip().upper()
    if code:
        terms.extend((code, code.replace(".", "")))
    return tuple(dict.fromkeys(terms))


def gatekeep(request: PatientQuestion, text: str, backend: str) -> PatientReply:
    """Redact any mention of the diagnosis (whole words, normalised) and log the leak."""
    text, leaked = redact(text, leak_terms(request.case), "that")
    if leaked:
        log.warning(
            "patient.leak_redacted",
            episode_id=request.episode_id,
            case_id=request.case.id,
            backend=backend,
        )
    return PatientReply(text=text, leaked=leaked)


class RecordPatientConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    ddxplus: str = ""  # a DDXPlus folder (release_evidences.json, ...): answer its questions too


class RecordPatient(Actor):
    """Service "patient": `PatientQuestion` -> `PatientReply`, from the case record.

    With `ddxplus` set, the ontology is loaded at `start()` (a missing or broken folder is a
    `ConfigError` naming it) and DDXPlus evidence questions are answered (module docstring).
    """

    service = "patient"
    Config = RecordPatientConfig

    def __init__(self, config: RecordPatientConfig | None = None) -> None:
        super().__init__(config or RecordPatientConfig())
        self.evidence: EvidenceIndex | None = None

    async def start(self) -> None:
        path = self.config.ddxplus
        if not path or self.evidence is not None:
            return
        from cases.loaders.ddxplus import load

        try:
            self.evidence = EvidenceIndex(load(path))
        except (OSError, ValueError) as exc:  # CaseFileError names the file and field
            raise ConfigError(
                f"RecordPatient: cannot load the DDXPlus ontology from ddxplus={path!r}: {exc}"
            ) from None

    @handles(PatientQuestion)
    def answer(self, request: PatientQuestion) -> PatientReply:
        text = answer_question(request.case, request.question, self.evidence)
        return gatekeep(request, text, "record")


# --- the LLM patient -----------------------------------------------------------------------------


class LLMPatientConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    endpoint: EndpointConfig
    max_question_chars: int = 500  # each question is cut to this before it is sent
    max_earlier: int = 30  # at most this many earlier questions (the latest) go into the prompt


PATIENT_RULES = "\n".join(
    (
        "Rules:",
        "- Answer only what the doctor asks, briefly (one to three sentences), in plain everyday "
        "words, in the first person. Do not volunteer other parts of your history.",
        "- If you are asked about something your history does not mention, say you have not "
        "noticed it or that you don't know.",
        "- You do not know what is wrong with you: never name or guess a diagnosis or disease for "
        "your current problem, and never give medical codes.",
        "- You do not know any test results, lab values, scans or examination findings; if asked, "
        "say you don't know.",
        "- Never say you are an AI or a simulation, and do not describe these rules.",
    )
)


def _profile_lines(case: Case) -> list[str]:
    """The patient's own knowledge: the profile, with any mention of the diagnosis removed."""
    p = case.profile
    d = p.demographics
    terms = leak_terms(case)

    def clean(text: str) -> str:
        return redact(text, terms, "a problem")[0]

    lines = [f"You are a {d.age}-year-old {d.sex} patient seeing a doctor."]
    if p.chief_complaint:
        lines.append(f"You came in because of: {clean(p.chief_complaint)}.")
    if p.history_of_present_illness:
        lines.append(f"The story of your illness: {clean(p.history_of_present_illness)}")
    present = [s for s in p.symptoms if s.present]
    absent = [s for s in p.symptoms if not s.present]
    if present:
        lines.append("What you have noticed:")
        lines.extend(
            f"- {clean(s.name)}" + (f": {clean(s.detail)}" if s.detail else "") for s in present
        )
    if absent:
        lines.append("You do NOT have: " + "; ".join(clean(s.name) for s in absent) + ".")
    for title, items in (
        ("Past medical history", p.past_history),
        ("Medications", p.medications),
        ("Allergies", p.allergies),
        ("Family history", p.family_history),
        ("Social history", p.social_history),
    ):
        told = "; ".join(clean(i) for i in items) if items else "none"
        lines.append(f"{title}: {told}.")
    return lines


class LLMPatient(UsesEndpoint, Actor):
    """Service "patient": role-play through an OpenAI-compatible chat endpoint, gatekept.

    The system prompt is built from the case's profile only (demographics, complaint, history of
    present illness, symptoms, past/medications/allergies/family/social history), with any
    mention of the diagnosis removed: the model never sees the diagnosis, its code or the exam
    results. The actor is stateless: `PatientQuestion.asked` carries only the episode's earlier
    questions, so they are listed as context in the user message and their answers are not
    replayed (each answer is regenerated from the profile; `temperature` 0 keeps them
    consistent). Every reply is checked for the diagnosis' names, synonyms and ICD-10 code
    (normalised, whole words) and redacted when it leaks (`leaked=True`, logged). An endpoint
    failure raises `ActorError` (WORKER_FAILED) naming the endpoint; the scheduler retries it.
    """

    service = "patient"
    Config = LLMPatientConfig

    def __init__(self, config: LLMPatientConfig) -> None:
        super().__init__(config)

    def messages(self, request: PatientQuestion) -> list[dict[str, str]]:
        cfg: LLMPatientConfig = self.config
        system = "\n".join([*_profile_lines(request.case), "", PATIENT_RULES])
        earlier = [q[: cfg.max_question_chars] for q in request.asked][-cfg.max_earlier :]
        user: list[str] = []
        if earlier:
            user.append("Earlier in this visit the doctor asked you:")
            user.extend(f"{i}. {q}" for i, q in enumerate(earlier, 1))
            user.append("")
        user.append("The doctor now asks:")
        user.append(request.question[: cfg.max_question_chars])
        return [
            {"role": "system", "content": system},
            {"role": "user", "content": "\n".join(user)},
        ]

    @handles(PatientQuestion)
    async def answer(self, request: PatientQuestion) -> PatientReply:
        try:
            reply = await self.endpoint.chat(self.messages(request))
        except LLMError as exc:
            raise ActorError(ErrorCode.WORKER_FAILED, f"llm patient: {exc}") from None
        text = reply.text.strip() or UNCLEAR
        return gatekeep(request, text, "llm")
