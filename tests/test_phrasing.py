"""The greeting's phrasing rules (``gateway.pipeline.phrasing``) as a table: what the user said (or mem0
extracted) → what the bot says back. Each row is a rule; the comment names the trap it guards."""

from __future__ import annotations

import pytest

from gateway.pipeline.phrasing import clause, sentence

# (what was stored, what the bot says back; None = nothing to say back)
USERS_WORDS: list[tuple[str, str | None]] = [
    # the example: lower-case echo → second person, names capitalised, "I am" → "you're"
    ("hi, i am marguerite and my dog is called biscuit", "you're Marguerite and your dog is called Biscuit"),
    ("Hi! I'm Marguerite. My dog is called Biscuit.", "you're Marguerite and your dog is called Biscuit"),
    # "you" already in the sentence: about the bot, not the user — a naive swap says
    # "you told him you were late"
    ("I told him you were late", None),
    ("Can you remember that I like tea", None),
    # "X and I" as a subject or after a preposition: "you and your sister", not "your sister and you"
    ("My sister and I went to Rome last summer.", "you and your sister went to Rome last summer"),
    ("between my sister and me, we own a boat", "between you and your sister, you own a boat"),
    ("Ann and I are getting married", "you and Ann are getting married"),
    # ...but not where "and I" starts a new clause after an object
    ("I have my dog and I walk daily", "you have your dog and you walk daily"),
    ("I am Ada and I sail", "you're Ada and you sail"),
    # a capital I inside a word or a name is not the pronoun
    ("I'm from I-95 country", "you're from I-95 country"),
    ("My grandfather fought in WWII", "your grandfather fought in WWII"),
    # quoted speech stays verbatim (its "I" is the speaker's)
    ('My boss said "I quit" and left', 'your boss said "I quit" and left'),
    ('I told my brother "you are wrong"', 'you told your brother "you are wrong"'),
    # agreement: am → are, was → were only after I
    ("I was born in 1990 and my car was stolen", "you were born in 1990 and your car was stolen"),
    ("I really was surprised", "you really were surprised"),
    ("I wasn't ready", "you weren't ready"),
    # contractions
    ("I've got two cats and I'll adopt a third", "you've got two cats and you'll adopt a third"),
    # we / our: the user's household
    ("we have two kids and our house is blue", "you have two kids and your house is blue"),
    # lower-case typing gets names back after a naming cue, but not common words
    ("i live in lyon", "you live in Lyon"),
    ("i moved from lyon to oslo", "you moved from Lyon to Oslo"),
    ("i am tired", "you're tired"),
    ("ok so i work at acme as an engineer", "you work at Acme as an engineer"),
    ("my name is ada lovelace", "your name is Ada lovelace"),
    # typed capitals are left as the user typed them
    ("I moved from Lyon to Oslo", "you moved from Lyon to Oslo"),
    # fillers, courtesy and questions are not facts
    ("you know, I love jazz", "you love jazz"),
    ("thanks!", None),
    ("thanks, that helps", None),
    ("hello again", None),
    ("tell me a joke", None),
    ("hello", None),
    ("what's the weather like?", None),
    ("Hi. What's my name? I love jazz.", "you love jazz"),
    # a sentence about something else is said as typed, its ordinary first word lower-cased
    ("The dog is a corgi", "the dog is a corgi"),
    ("Biscuit is a corgi", "Biscuit is a corgi"),
    # curly apostrophes (phones type them)
    ("I\u2019m vegetarian", "you're vegetarian"),
]

EXTRACTED: list[tuple[str, str | None]] = [
    ("User's name is Marguerite", "your name is Marguerite"),
    ("User has a dog named Biscuit", "you have a dog named Biscuit"),
    ("User lives in Oslo with their partner", "you live in Oslo with your partner"),
    ("User really likes jazz", "you really like jazz"),
    ("User studies French", "you study French"),
    ("User watches films on Sundays", "you watch films on Sundays"),
    ("User is vegetarian", "you are vegetarian"),
    ("User moved from Lyon to Oslo", "you moved from Lyon to Oslo"),
    ("The user's favourite colour is green.", "your favourite colour is green"),
    # mem0's older, subjectless style
    ("Lives in Oslo", "you live in Oslo"),
    ("Has a dog named Max", "you have a dog named Max"),
    # a fact whose subject is someone else is said as written
    ("Marcus has a wife named Elena", "Marcus has a wife named Elena"),
    # a store that keeps no roles hands back the user's own words as "facts": still never first person
    ("My name is Ada and I sail on weekends", "your name is Ada and you sail on weekends"),
]


@pytest.mark.parametrize(("stored", "said"), USERS_WORDS)
def test_the_users_words_are_said_back_in_the_second_person(stored: str, said: str | None) -> None:
    assert clause(stored, extracted=False) == said


@pytest.mark.parametrize(("stored", "said"), EXTRACTED)
def test_extracted_facts_are_said_to_the_user_not_about_them(stored: str, said: str | None) -> None:
    assert clause(stored, extracted=True) == said


def test_no_first_person_survives_outside_quotes() -> None:
    import re

    for stored, _ in USERS_WORDS:
        said = clause(stored, extracted=False) or ""
        unquoted = re.sub(r'"[^"]*"', "", said)
        assert not re.search(r"\b(I(?![\w-])|me|my|mine|myself|am)\b", unquoted), (stored, said)


def test_clauses_join_into_one_sentence() -> None:
    assert sentence([]) == ""
    assert sentence(["you live in Oslo"]) == "You told me you live in Oslo"
    assert sentence(["you live in Oslo", "you love jazz"]) == "You told me you live in Oslo and you love jazz"
    assert (
        sentence(["you're Marguerite and your dog is called Biscuit", "you live in Oslo"])
        == "You told me you're Marguerite and your dog is called Biscuit, and you live in Oslo"
    )
    assert (
        sentence(["you live in Oslo", "you love jazz", "you sail"])
        == "You told me you live in Oslo, you love jazz and you sail"
    )
