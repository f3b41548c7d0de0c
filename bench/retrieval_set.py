"""A scripted question set for per-turn memory search: synthetic users, what they said, what they ask.

Each user holds what a raw-storage tenant keeps (``infer=False``): a handful of **facts** said in
passing ("hi, i'm new here. my dog is called Biscuit"), half of them inside a longer spoken turn,
the bot's replies (some echo a fact's name back: "Biscuit sounds adorable!"), and many **filler**
turns — small talk, requests, and hard negatives that share the facts' words ("my neighbour's dog
barks all night", "what's a good name for a boat?"). Then each user asks about their facts in two
ways:

* ``paraphrase``: the fact's idea in other words, without its name or value ("what's my pet called
  again?"); some share a word stem with the fact, some share nothing (``overlap=False``) and only the
  embedding can find them;
* ``name``: a question that mentions the fact's exact name or value in another context ("Biscuit
  has been sick all week, any advice?") — names a static-word-vector embedder like WordLlama barely
  represents.

A question's answer is the one memory holding the fact. ``recall@k`` = the share of questions whose
fact is among the first ``k`` results of a search of that user's memories. Deterministic for a seed.
Built for ``bench/scenarios/retrieval.py``; any evaluation can reuse ``build``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

PETS = (
    "Biscuit Pickles Mochi Waffles Juniper Pistachio Nacho Clementine Bramble Tofu Marzipan Pretzel".split()
)
PEOPLE = (
    "Marguerite Ingrid Thaddeus Oluwaseun Siobhan Ximena Bartholomew Anouk Kazimir Leocadia Henrike "
    "Ignatius Saoirse Teodora Florian Wilhelmina"
).split()
KIDS = "Casimir Elodie Rafferty Ottoline Barnaby Sunniva Lysander Inés Tobias Wren".split()
CITIES = "Lyon Oslo Porto Valparaiso Ljubljana Tbilisi Hobart Quito Bergen Tromso Cork Plovdiv".split()
COMPANIES = [
    "Veridian Labs",
    "Kestrel Robotics",
    "Halcyon Health",
    "Pinecrest Logistics",
    "Orbitwise",
    "Stonebridge Bank",
    "Lumen Dairy",
    "Quillfeather Press",
]
JOBS = [
    "dental hygienist",
    "structural engineer",
    "pastry chef",
    "paramedic",
    "translator",
    "glazier",
    "court stenographer",
    "beekeeper",
]
ALLERGENS = "peanuts shellfish sesame kiwi mustard celery lupin buckwheat".split()
HOBBIES = [
    "bouldering",
    "fencing",
    "birdwatching",
    "kitesurfing",
    "woodturning",
    "geocaching",
    "orienteering",
    "falconry",
]
INSTRUMENTS = "cello banjo oboe ukulele bassoon harpsichord accordion theremin".split()
DISHES = ["pad thai", "pierogi", "shakshuka", "ramen", "moussaka", "bibimbap", "feijoada", "goulash"]
MONTHS = "January February March April May June July August September October November December".split()
CODENAMES = "Nightjar Halcyon Tamarind Quasar Bluebell Kingfisher Obsidian Marigold".split()
LANGUAGES = "Portuguese Korean Finnish Georgian Icelandic Tagalog Welsh Hungarian".split()
CARS = ["Volvo 240", "Subaru Outback", "Citroen 2CV", "Saab 900", "Land Rover Defender", "Fiat Panda"]
MEDS = "levothyroxine metformin lisinopril sertraline atorvastatin omeprazole".split()
TEAMS = ["Celtic", "Boca Juniors", "Ajax", "Galatasaray", "Benfica", "Rapid Vienna"]


@dataclass(frozen=True)
class Template:
    """One kind of fact: how a user says it, how they ask about it, and what nearby talk looks like."""

    key: str
    slots: dict[str, list[str]]
    statements: list[str]
    # (question, shares a word stem with the statement) — asked without the fact's name or value.
    paraphrases: list[tuple[str, bool]]
    names: list[str]  # questions naming the fact's value
    echoes: list[str]  # the bot's replies that repeat the value (distractors)
    hard: list[str]  # other turns sharing the fact's words (distractors)


TEMPLATES = [
    Template(
        "pet",
        {"pet": PETS},
        [
            "hi, i'm new here. my dog is called {pet}",
            "we adopted a rescue dog last year, his name is {pet}",
            "i have a little terrier named {pet}",
        ],
        [
            ("what's my dog's name again?", True),
            ("do you remember what my pet is called?", False),
            ("what did i call my puppy?", False),
        ],
        ["{pet} has been sick all week, any advice?", "is it ok to give {pet} some cheese?"],
        ["{pet} sounds adorable!", "Give {pet} a scratch behind the ears from me."],
        [
            "my neighbour's dog barks all night",
            "what's a good name for a boat?",
            "dogs or cats, which do you prefer?",
        ],
    ),
    Template(
        "city",
        {"city": CITIES},
        [
            "i live in {city} now",
            "we moved to {city} last spring for my job",
            "home for me is {city} these days",
        ],
        [("where do i live?", True), ("which town is my home?", False), ("what city did i move to?", True)],
        ["any good restaurants in {city}?", "what's the weather usually like in {city} in winter?"],
        ["{city} is a beautiful place to live.", "I hear {city} has great food."],
        ["what's the best city for a weekend trip?", "i'd love to live by the sea one day"],
    ),
    Template(
        "job",
        {"job": JOBS, "company": COMPANIES},
        ["i work as a {job} at {company}", "i've been a {job} for six years, currently at {company}"],
        [("what do i do for a living?", False), ("where do i work?", True), ("what's my profession?", False)],
        ["do you know anything about {company}?", "should i ask {company} for a raise?"],
        ["Being a {job} sounds demanding!", "{company} sounds like an interesting employer."],
        ["work has been exhausting lately", "my friend is looking for a new job"],
    ),
    Template(
        "sister",
        {"person": PEOPLE, "job": JOBS},
        ["my sister {person} is a {job}", "my big sister {person} visits every christmas"],
        [("tell me about my sister", True), ("do i have any siblings?", False)],
        ["is {person} older than me?", "what should i get {person} for her birthday?"],
        ["{person} sounds lovely.", "It's nice that you and {person} are close."],
        ["my friend's sister is getting married", "i never know what to buy people for christmas"],
    ),
    Template(
        "allergy",
        {"allergen": ALLERGENS},
        [
            "i'm allergic to {allergen}",
            "careful with recipes, i can't have {allergen}, i get a bad allergic reaction",
        ],
        [("do i have any food allergies?", False), ("is there something i can't eat?", True)],
        ["can i eat {allergen}?", "is {allergen} in pesto?"],
        ["I'll keep {allergen} out of any recipe ideas.", "Noted, no {allergen} for you."],
        ["what can i eat to have more energy?", "my friend is allergic to cats"],
    ),
    Template(
        "hobby",
        {"hobby": HOBBIES},
        ["on weekends i go {hobby}", "my favourite thing to do on saturdays is {hobby}"],
        [("what do i like to do on weekends?", True), ("what's my favourite pastime?", False)],
        ["where can i do {hobby} near me?", "what gear do i need for {hobby}?"],
        ["{hobby} sounds like so much fun!", "How long have you been into {hobby}?"],
        ["this weekend i'm just going to rest", "i should find a new hobby"],
    ),
    Template(
        "instrument",
        {"instrument": INSTRUMENTS},
        [
            "i've been learning the {instrument} for two years",
            "i play the {instrument} in a community orchestra",
        ],
        [("which instrument do i play?", True), ("what music lessons am i taking?", False)],
        ["how do i tune a {instrument}?", "any famous pieces for the {instrument}?"],
        ["The {instrument} is such a beautiful instrument.", "Keep practising the {instrument}!"],
        ["i love listening to jazz", "my neighbour plays the drums at midnight"],
    ),
    Template(
        "food",
        {"dish": DISHES},
        ["my favourite dish is {dish}", "honestly i could eat {dish} every single day"],
        [("what food do i love most?", True), ("what should i cook as a treat for myself?", False)],
        ["do you have a good recipe for {dish}?", "where does {dish} come from?"],
        ["{dish} is delicious.", "Great choice, {dish} is a classic."],
        ["i had a terrible sandwich for lunch", "what should i cook for dinner tonight?"],
    ),
    Template(
        "birthday",
        {"month": MONTHS, "day": [str(d) for d in range(2, 28)]},
        ["my birthday is on {month} {day}", "i was born on {day} {month}"],
        [("when is my birthday?", True), ("how old will i turn and when?", False)],
        ["what should i plan for {month} {day}?", "any ideas for a party on the {day}th of {month}?"],
        ["I'll remember {month} {day}!", "A {month} birthday, lovely."],
        ["my mum's birthday is coming up", "i always forget anniversaries"],
    ),
    Template(
        "project",
        {"codename": CODENAMES},
        [
            "at work i'm leading project {codename}",
            "we kicked off the {codename} project this quarter and i'm in charge",
        ],
        [("which project am i leading?", True), ("what am i in charge of at the office?", False)],
        ["how should i present {codename} to the board?", "{codename} is behind schedule, what do i do?"],
        ["Good luck with {codename}!", "{codename} sounds like a big responsibility."],
        ["i hate project meetings", "my manager wants a status report by friday"],
    ),
    Template(
        "language",
        {"language": LANGUAGES},
        [
            "i'm learning {language} because my partner's family speaks it",
            "i take {language} classes twice a week",
        ],
        [("which language am i studying?", False), ("what classes am i taking?", True)],
        ["say something nice in {language}", "is {language} hard to pronounce?"],
        ["{language} is a fascinating language.", "Good luck with your {language}!"],
        ["i wish i was better at languages", "learning anything new at my age is hard"],
    ),
    Template(
        "car",
        {"car": CARS},
        ["i drive an old {car}", "my car is a {car}, it's older than me"],
        [("what car do i drive?", True), ("what vehicle do i own?", False)],
        ["how often should a {car} be serviced?", "is a {car} good in snow?"],
        ["A {car} is a classic.", "Take good care of that {car}."],
        ["traffic was terrible this morning", "should i buy an electric car?"],
    ),
    Template(
        "partner",
        {"person": PEOPLE},
        ["my wife {person} and i just celebrated ten years", "my partner is called {person}"],
        [("who is my partner?", True), ("who am i married to?", False)],
        ["what should i get {person} for our anniversary?", "{person} wants to redecorate, thoughts?"],
        ["Congratulations to you and {person}!", "{person} is lucky to have you."],
        ["my friends are all getting divorced", "what's a romantic place for dinner?"],
    ),
    Template(
        "medication",
        {"med": MEDS},
        ["i take {med} every morning", "my doctor put me on {med} last year"],
        [("what medicine am i on?", False), ("what do i take every morning?", True)],
        ["does {med} interact with coffee?", "can i drink alcohol on {med}?"],
        ["Remember to take your {med}.", "{med} is a common prescription."],
        ["i have a headache today", "i need to book a doctor's appointment"],
    ),
    Template(
        "kid",
        {"kid": KIDS},
        ["my son {kid} just started school", "{kid}, my youngest, turns six next month"],
        [("tell me about my son", True), ("do i have children?", False)],
        ["what's a good gift for {kid}?", "{kid} won't sleep, any tips?"],
        ["{kid} sounds like a great kid!", "Say hi to {kid} from me."],
        ["kids these days are always on screens", "school holidays are coming up"],
    ),
    Template(
        "team",
        {"team": TEAMS},
        ["i support {team}, always have", "i'm a huge {team} fan"],
        [("which club do i support?", True), ("what football team do i follow?", False)],
        ["did {team} win last night?", "who is {team}'s best player?"],
        ["Up the {team}!", "{team} had a good season."],
        ["football is on every night this week", "i don't really follow sport"],
    ),
]

FILLER_USER = [
    "can you help me write an email to my landlord?",
    "tell me a joke",
    "what's the capital of australia?",
    "i'm so tired today",
    "how do i make cold brew coffee?",
    "what's a good book to read on holiday?",
    "remind me to call the bank tomorrow",
    "how many cups are in a litre?",
    "i can't decide what to watch tonight",
    "explain how vaccines work",
    "what's the difference between a virus and bacteria?",
    "i need motivation to exercise",
    "write me a short poem about autumn",
    "how do i get red wine out of a carpet?",
    "what time zone is japan in?",
    "summarise the plot of hamlet",
    "give me a quick stretching routine",
    "is it going to rain this week?",
    "how do i fix a squeaky door?",
    "what's a healthy breakfast?",
    "i'm bored, suggest something",
    "how long do i boil an egg?",
    "what's the tallest mountain in africa?",
    "help me plan my week",
    "translate thank you very much into french",
    "what's compound interest?",
    "i just got back from the gym",
    "do plants need sunlight at night?",
    "recommend a podcast about history",
    "how do magnets work?",
    "i spilled coffee on my laptop",
    "what should i name my new plant?",
    "is chocolate bad for you?",
    "how far is the moon?",
    "i want to start journaling",
    "how do i say no politely?",
    "what's the best way to learn to code?",
    "my phone battery dies so fast",
    "what are some cheap date ideas?",
    "can you recommend a board game?",
    "how do i clean a cast iron pan?",
    "why is the sky blue?",
    "give me a fun fact",
    "i had a weird dream last night",
    "how do i meditate?",
    "what's a good houseplant for beginners?",
    "i'm thinking about repainting the kitchen",
    "what year did the berlin wall fall?",
    "help me write a birthday card",
    "how many steps a day should i walk?",
    "what's the weather like on mars?",
    "i need a gift idea for a coworker",
    "is it rude to leave a party early?",
    "how do i stop procrastinating?",
    "i finally finished that puzzle",
    "what goes well with salmon?",
    "should i get a standing desk?",
    "what is a haiku?",
    "how do airplanes stay up?",
    "i'm nervous about a job interview",
]
FILLER_BOT = [
    "Sure, here's a draft you can adapt.",
    "Why did the scarecrow win an award? Because he was outstanding in his field.",
    "Canberra is the capital of Australia.",
    "Rest sounds like a good idea today.",
    "Steep coarse grounds in cold water for 12 to 18 hours.",
    "A light novel or a travel memoir works well on holiday.",
    "I can't set reminders, but write it down somewhere visible.",
    "There are about 4.2 cups in a litre.",
    "How about a classic comedy?",
    "Vaccines train your immune system to recognise a pathogen.",
    "Viruses need a host cell to reproduce; bacteria don't.",
    "Start small: ten minutes a day adds up.",
    "Golden leaves drift down, the year exhales slowly.",
    "Blot it, then use a mix of dish soap and vinegar.",
    "Japan uses Japan Standard Time, UTC+9.",
    "Hamlet avenges his father's murder, and nearly everyone dies.",
    "Try neck rolls, a hamstring stretch and a cat-cow.",
    "I can't check forecasts, but a weather app can.",
    "A little oil or silicone spray on the hinge usually fixes it.",
    "Oats with fruit and nuts is a good start.",
    "How about a walk somewhere new?",
    "About nine minutes for a hard-boiled egg.",
    "Kilimanjaro, at 5,895 metres.",
    "Let's list your fixed commitments first.",
    "Merci beaucoup.",
    "It's interest earned on interest as well as principal.",
    "Nice work getting to the gym!",
    "No, photosynthesis needs light, but plants respire at night.",
    "Try a narrative history podcast.",
    "Moving charges create magnetic fields.",
    "Turn it off right away and let it dry upside down.",
    "How about naming it after a favourite author?",
    "Dark chocolate in moderation is fine.",
    "About 384,000 kilometres.",
    "Start with three lines each evening.",
    "A warm but clear 'I can't this time' works.",
    "Pick a small project and build it step by step.",
    "Lower the screen brightness and check battery-hungry apps.",
    "A picnic or a free museum day.",
    "Ticket to Ride is a great pick.",
    "Scrub with salt, rinse, dry, and oil it lightly.",
    "Sunlight scatters, and blue light scatters most.",
    "Octopuses have three hearts.",
    "Dreams can be strange, what happened in it?",
    "Focus on your breath and let thoughts pass.",
    "A pothos is very forgiving.",
    "A warm colour can make a kitchen feel cosy.",
    "It fell in 1989.",
    "Happy birthday! Wishing you a wonderful year ahead.",
    "Around 7,000 to 10,000 is a common goal.",
    "Cold: about minus 60 degrees Celsius on average.",
    "A nice notebook or a good coffee is always welcome.",
    "Not if you thank the host first.",
    "Try the two-minute rule: just start.",
    "Well done finishing it!",
    "Lemon, dill and new potatoes.",
    "It can help if you alternate sitting and standing.",
    "A three-line poem of five, seven and five syllables.",
    "Wings shape the airflow to create lift.",
    "Prepare a few stories about your work and you'll do well.",
]


# Spoken turns often carry a fact among other things; half the facts are said inside one of these.
AROUND = [
    (
        "ugh, long day. the bus was late again and it rained the whole way home, but anyway",
        "so that's my news",
    ),
    ("sorry i've been quiet, work has been mad and i barely slept this week.", "anyway, how are you?"),
    ("before i forget, since you asked about me last time:", "that's about it really, nothing exciting"),
    ("ok quick update on my life, i finally cleaned the flat and", "also i need to buy groceries later"),
    (
        "i was telling my colleague about this at lunch today, well,",
        "and she laughed because hers is the same",
    ),
    ("random thing but", "i don't know why i'm telling you this haha"),
]


@dataclass
class Question:
    user: str
    text: str
    kind: str  # "paraphrase" or "name"
    fact: str  # the template key
    answer: str  # the memory text that holds the fact
    overlap: bool = True  # paraphrase only: shares a word stem with the answer


@dataclass
class User:
    user: str
    memories: list[tuple[str, str]] = field(default_factory=list)  # (role, text), oldest first
    facts: dict[str, str] = field(default_factory=dict)  # template key -> the memory text


@dataclass
class QuestionSet:
    users: list[User]
    questions: list[Question]


def build(n_users: int = 60, facts_per_user: int = 8, filler: int = 150, seed: int = 16) -> QuestionSet:
    """``n_users`` users holding ``facts_per_user`` facts and about ``filler`` other turns each, and
    two questions per fact (one paraphrase, one naming the value)."""
    rng = random.Random(seed)
    users: list[User] = []
    questions: list[Question] = []
    for u in range(n_users):
        user = User(f"user-{u:03d}")
        chosen = rng.sample(TEMPLATES, facts_per_user)
        turns: list[tuple[str, str]] = []
        for t in chosen:
            values = {slot: rng.choice(pool) for slot, pool in t.slots.items()}
            fact = rng.choice(t.statements).format(**values)
            if rng.random() < 0.5:
                before, after = rng.choice(AROUND)
                fact = f"{before} {fact}, {after}"
            user.facts[t.key] = fact
            turns.append(("user", fact))
            turns.append(("assistant", rng.choice(t.echoes).format(**values)))
            turns.extend(("user", h) for h in t.hard)
            question, overlap = rng.choice(t.paraphrases)
            questions.append(Question(user.user, question, "paraphrase", t.key, fact, overlap))
            questions.append(Question(user.user, rng.choice(t.names).format(**values), "name", t.key, fact))
        for _ in range(max(0, filler - len(turns)) // 2):
            said = rng.choice(FILLER_USER)
            if rng.random() < 0.3:
                said = f"{said} oh and {rng.choice(FILLER_USER)}"
            turns.append(("user", said))
            turns.append(("assistant", rng.choice(FILLER_BOT)))
        rng.shuffle(turns)
        user.memories = turns
        users.append(user)
    return QuestionSet(users, questions)
