"""Memories said back to the person they are about: in the second person, deterministically, no LLM.

A raw memory is what the user typed ("hi, i am marguerite and my dog is called biscuit"); an
extracted one is mem0's third-person fact ("User's name is Marguerite", "User lives in Oslo"). Read
out as they are, the first sounds like a log and the second like a file about someone else. Here each
becomes a clause the bot can say to the user ("you're Marguerite and your dog is called Biscuit",
"your name is Marguerite", "you live in Oslo"), and the clauses one sentence: "You told me …".

The rules, each one because a plain word swap gets it wrong (``tests/test_phrasing.py`` is the table):

* Only the pronoun ``I`` changes, never a capital I inside a word or name ("I-95", "WWII").
* ``am`` → ``are``; ``was`` → ``were`` only right after ``I`` ("my car was stolen" stays).
* "my sister and I" / "my sister and me" → "you and your sister" (not "your sister and you").
* Quoted speech stays verbatim: 'my boss said "I quit"' → 'your boss said "I quit"'.
* A sentence that already says "you" (outside quotes) is about the bot or addressed to it ("I told
  him you were late"): swapping both ways needs to know who "you" is; it is not said back at all.
* Questions, greetings and thanks are not facts about the user: dropped ("hi", "thanks!", "what's
  the weather?").
* All-lower-case typing gets its names back: the word after a naming cue ("i am", "my name is",
  "called", "named", "from", "live in", "moved to") is capitalised unless it is a common word
  ("i am tired" stays tired). Text the user capitalised is left as typed.
* mem0's facts: "User"/"The user" becomes "you" with the verb agreeing ("User has" → "you have",
  "User really likes" → "you really like"), "User's" → "your", and "their"/"them" in a fact about
  the user → "your"/"you".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

# Leading words that carry nothing to say back ("hi, ", "ok so ", "well, ").
_FILLER = re.compile(
    r"^(?:(?:hi there|hello there|hello again|hey there|hi again|hi|hello|hey|hiya|howdy|yo|ok|okay|so|"
    r"well|um+|uh+|oh|ah|yes|yeah|yep|no|nope|right|anyway|actually|alright|good (?:morning|afternoon|"
    r"evening|day)|by the way|you know what|you know|you see|thanks|thank you)\b[\s,.!;:-]*)+",
    re.IGNORECASE,
)
# Whole sentences that are courtesy, not content.
_COURTESY = re.compile(
    r"^(?:thanks?(?: you)?(?: so much| a lot)?|thank you(?: very much)?|cheers|bye|goodbye|see you|"
    r"good ?night|nice to meet you|ok(?:ay)?|sure|great|cool|yes|no|again|"
    r"that(?:'s| is)? (?:helps?|helpful|great|good|nice|cool|fine|interesting|funny)|"
    r"tell me (?:a joke|more|something))$",
    re.IGNORECASE,
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_QUOTED = re.compile(r"(\"[^\"]*\"|\u201c[^\u201d]*\u201d)")
_SECOND_PERSON = re.compile(r"\b(?:you|your|yours|yourself|yourselves|you're|you've|you'll|you'd|ya)\b", re.I)

# First person → second person, word by word (lower-cased keys; "I" is handled by ``_swap``).
_SWAP = {
    "me": "you",
    "my": "your",
    "mine": "yours",
    "myself": "yourself",
    "i'm": "you're",
    "i've": "you've",
    "i'll": "you'll",
    "i'd": "you'd",
    "im": "you're",
    "ive": "you've",
    "we": "you",
    "us": "you",
    "our": "your",
    "ours": "yours",
    "ourselves": "yourselves",
    "we're": "you're",
    "we've": "you've",
    "we'll": "you'll",
    "we'd": "you'd",
    "am": "are",
}
# Words that may stand between a subject and its verb ("I really was", "I never was").
_ADVERBS = {"also", "still", "just", "never", "really", "always", "even", "only", "already", "not", "too"}
_WAS = {"was": "were", "wasn't": "weren't"}
# "I am" is said back as people say it: "you're".
_I_AM = re.compile(r"\b[Ii] am\b")

# "my sister and I", "Ann and me", "our neighbours and I" → "you and your sister", …
# A noun phrase ("my little sister") holds no verb: "My name is Ada and I sail" has no "X and I".
_VERBISH = r"(?:is|are|was|were|am|has|have|had|do|does|did|will|would|can|could)\b"
_AND_I = re.compile(
    # Only where a subject or a preposition's object starts (sentence start, after a comma or a
    # preposition): in "I have my dog and I walk", "my dog" is an object and "I" starts a clause.
    r"(?:^|(?<=, )|(?<=\bwith )|(?<=\bbetween )|(?<=\bfor )|(?<=\bto )|(?<=\bby )|(?<=\bfrom ))"
    r"((?i:my|our|his|her|their|the|a|an)\s+(?:(?!"
    + _VERBISH
    + r")[\w'-]+\s+){0,2}?(?!"
    + _VERBISH
    + r")[\w'-]+"
    r"|[A-Z][\w'-]*)\s+and\s+(?:I|i|me)\b"
)

# A capitalised word the lower-case typist meant after these cues.
_NAME_CUE = re.compile(
    r"\b(i am|i'm|im|my name is|name's|call me|called|named|from|live in|living in|lives in|moved to|"
    r"moving to|born in|grew up in|work at|working at|works at)\s+([a-z][\w'-]*)",
)
# "from Lyon to oslo": the second place, once the first is capitalised.
_FROM_TO = re.compile(r"\b(from [A-Z][\w'-]* to)\s+([a-z][\w'-]*)")
_NOT_NAMES = frozenset(
    """a an the my our your his her their this that these those here there home back from in on at to
    of for with by about into over not no so very really just quite too also still now currently
    always never sometimes usually fine good great ok okay well happy sad tired hungry busy sick ill
    sorry sure glad new old young married single divorced retired vegetarian vegan allergic afraid
    scared excited worried bored ready late early free available interested pregnant alone lonely
    done allowed able going trying working living moving looking thinking planning learning studying
    a little bit lot kind sort pretty big small one two three four five six seven eight nine ten
    twenty thirty forty fifty hundred some any all every each both half most more less out up down
    off away gone left right around abroad outside inside downtown nearby far close near teacher
    nurse doctor engineer student developer programmer lawyer chef designer writer artist manager
    city town country village countryside north south east west""".split()
)
_NOT_NAME_SUFFIXES = ("ing", "ed", "ly", "ful", "ous", "ive", "able", "ible", "less", "ish")

# Sentence starters that are ordinary words, lower-cased inside "You told me …".
_COMMON_STARTERS = frozenset(
    """the a an it its there this that these those today yesterday tomorrow last next also since
    when after before every each both some one two three his her their he she they""".split()
)

# mem0's third-person facts.
_USER_SUBJECT = re.compile(r"^(?:the\s+)?user(?:'s)?\b", re.IGNORECASE)
_THIRD_TO_SECOND = {
    "their": "your",
    "theirs": "yours",
    "them": "you",
    "themselves": "yourself",
    "themself": "yourself",
    "they": "you",
    "they're": "you're",
    "they've": "you've",
    "they'll": "you'll",
    "they'd": "you'd",
}
_IRREGULAR_3SG = {"is": "are", "has": "have", "was": "were", "does": "do", "goes": "go", "isn't": "aren't",
                  "hasn't": "haven't", "wasn't": "weren't", "doesn't": "don't"}  # fmt: skip
# A subjectless fact ("Lives in Oslo", "Has a dog named Max") starts with one of these.
_FACT_VERBS = frozenset(
    """is has was does lives likes loves works enjoys prefers owns wants plans studies speaks plays
    hates dislikes needs drives goes teaches watches reads writes runs uses visited moved lived worked
    started adopted bought sold joined left married grew graduated intends follows collects cooks
    bakes knows believes thinks feels hopes""".split()
)
_FIRST_PERSON = re.compile(r"\b(?:I|i|me|my|mine|myself|I'm|i'm|I've|I'll|I'd)\b(?![\w-])")
_WORD = re.compile(r"[A-Za-z][\w'-]*|\S")


def _base_verb(verb: str) -> str:
    """Third person singular → the form that agrees with "you" (has → have, studies → study)."""
    lower = verb.lower()
    if lower in _IRREGULAR_3SG:
        return _IRREGULAR_3SG[lower]
    if lower.endswith("ies") and len(lower) > 4:
        return lower[:-3] + "y"
    if lower.endswith(("ches", "shes", "sses", "xes", "zes", "oes")):
        return lower[:-2]
    if lower.endswith("s") and not lower.endswith("ss"):
        return lower[:-1]
    return lower  # past tense ("moved") agrees already


def _names_back(text: str) -> str:
    """Capitalise the name the all-lower-case typist meant after a naming cue."""

    def cap(match: re.Match[str]) -> str:
        word = match.group(2)
        if word in _NOT_NAMES or word.endswith(_NOT_NAME_SUFFIXES):
            return match.group(0)
        return f"{match.group(1)} {word[0].upper()}{word[1:]}"

    return _FROM_TO.sub(cap, _NAME_CUE.sub(cap, text))


def _swap_first_person(text: str) -> str:
    """First person → second, word by word, with agreement (am → are, I was → you were)."""
    out: list[str] = []
    previous_subject = False  # the last word was "I" (adverbs between do not count)
    pos = 0
    for match in re.finditer(r"[A-Za-z][A-Za-z0-9'\u2019-]*", text):
        out.append(text[pos : match.start()])
        word = match.group(0).replace("\u2019", "'")
        lower = word.lower()
        replacement = word
        if word in ("I", "i"):
            replacement, subject = "you", True
        elif lower in _WAS and previous_subject:
            replacement, subject = _WAS[lower], False
        elif lower in _SWAP:
            replacement, subject = _SWAP[lower], False
        elif lower in _ADVERBS and previous_subject:
            subject = True
        else:
            subject = False
        out.append(replacement)
        previous_subject = subject
        pos = match.end()
    out.append(text[pos:])
    return "".join(out)


def _outside_quotes(text: str, fn: Callable[[str], str]) -> str:
    parts = _QUOTED.split(text)
    return "".join(p if i % 2 else fn(p) for i, p in enumerate(parts))


def _first_person_clause(sentence: str) -> str | None:
    sentence = sentence.strip()
    if not sentence or sentence.endswith("?"):
        return None
    sentence = _FILLER.sub("", sentence).strip()
    body = sentence.rstrip(" .!;,:-")
    if not body or _COURTESY.fullmatch(body):
        return None
    unquoted = _QUOTED.sub(" ", body)
    if _SECOND_PERSON.search(unquoted):
        return None
    if not any(c.isupper() for c in unquoted):
        body = _outside_quotes(body, _names_back)
    body = _outside_quotes(body, lambda part: _AND_I.sub(r"I and \1", _I_AM.sub("I'm", part)))
    body = _outside_quotes(body, _swap_first_person)
    return _lower_first(body)


def _lower_first(text: str) -> str:
    first = re.match(r"[A-Za-z']+", text)
    if first and (first.group(0).lower() in _COMMON_STARTERS or first.group(0).lower().startswith("you")):
        return text[0].lower() + text[1:]
    return text


def _fact_clause(text: str) -> str | None:
    """mem0's third-person fact about the user, said to them."""
    text = text.strip().rstrip(" .!;,:-")
    if not text:
        return None
    subject = _USER_SUBJECT.match(text)
    if subject is not None:
        rest = text[subject.end() :].lstrip()
        if subject.group(0).lower().endswith("'s"):
            clause = "your " + rest
        else:
            words = rest.split(" ")
            i = 0
            while i < len(words) - 1 and (words[i].lower() in _ADVERBS or words[i].lower().endswith("ly")):
                i += 1
            if words and words[i]:
                words[i] = _base_verb(words[i])
            clause = "you " + " ".join(words)
    else:
        first, _, rest = text.partition(" ")
        if first.lower() not in _FACT_VERBS:
            return _lower_first(text)  # about someone else, or a subject we cannot tell: as written
        clause = f"you {_base_verb(first)} {rest}".rstrip()

    def third(part: str) -> str:
        def swap(match: re.Match[str]) -> str:
            word = match.group(0)
            lower = word.lower()
            if lower in ("user's", "the user's"):
                return "your"
            if lower in ("user", "the user"):
                return "you"
            return _THIRD_TO_SECOND.get(lower, word)

        return re.sub(r"\b(?:the user's|the user|user's|user|[a-z']+)\b", swap, part, flags=re.IGNORECASE)

    return _outside_quotes(clause, third)


def clause(text: str, *, extracted: bool) -> str | None:
    """One memory as a second-person clause, or None when it is nothing to say back.

    ``extracted``: a fact mem0's extraction wrote (third person); else the user's own words.
    """
    text = " ".join(text.split())
    if extracted and not _FIRST_PERSON.search(_QUOTED.sub(" ", text)):
        return _fact_clause(text)
    # The user's words — or a "fact" in the first person (a store that keeps no roles, such as the
    # Mem0 platform's raw memories): said back as the user's words either way.
    clauses = [c for c in (_first_person_clause(s) for s in _SENTENCE_END.split(text)) if c]
    if not clauses:
        return None
    return _join(clauses)


def _join(clauses: list[str]) -> str:
    if len(clauses) == 1:
        return clauses[0]
    serial = any(" and " in c for c in clauses)
    head, last = clauses[:-1], clauses[-1]
    return ", ".join(head) + (", and " if serial else " and ") + last


def sentence(clauses: Iterable[str]) -> str:
    """ "You told me …" over the clauses, in order, without the final full stop."""
    said = [c for c in clauses if c]
    if not said:
        return ""
    return "You told me " + _join(said)
