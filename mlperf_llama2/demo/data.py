"""The demo dataset: synthetic rows in the raw OpenOrca parquet schema, generated deterministically here.

Every row is written by this module from small fact tables and templates (nothing is taken from
OpenOrca): `id` ("cot.N", "flan.N", "niv.N", "t0.N"), `system_prompt`, `question`, `response`. The four
origins are balanced. Tasks are ones a 135M instruct model can partly get right (short facts, simple
arithmetic, classification, one-sentence rewrites), mixed with longer step-by-step explanations and
descriptions, so ROUGE and generated lengths vary as they do on the real set. All text is ASCII, every
answer is a sentence of at least three words, and niv / t0 rows carry system prompts that processorca's
filter keeps (SPEC §5 step 8). The same seed always gives the same frame.
"""

from __future__ import annotations

import random
from typing import Callable

ORIGINS = ("cot", "flan", "niv", "t0")
DEFAULT_ROWS_PER_ORIGIN = 72
DEFAULT_SEED = 2024
COLUMNS = ("id", "system_prompt", "question", "response")

SYSTEM_PROMPTS = {
    "cot": ("You are a careful assistant. Think step by step and show your reasoning.", ""),
    "flan": ("You are a helpful assistant.", ""),
    "niv": (
        "You are a classifier. Read the definition of the task and answer with one short sentence.",
        "Follow the task definition and give the label in a full sentence.",
    ),
    "t0": (
        "You are a writing assistant. Do exactly what the instruction asks.",
        "You help people edit short English sentences.",
    ),
}

CAPITALS = (
    ("France", "Paris"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Germany", "Berlin"), ("Japan", "Tokyo"),
    ("Egypt", "Cairo"), ("Canada", "Ottawa"), ("Russia", "Moscow"), ("China", "Beijing"), ("Greece", "Athens"),
    ("Portugal", "Lisbon"), ("Norway", "Oslo"), ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Ireland", "Dublin"),
    ("Austria", "Vienna"),
)
OPPOSITES = (
    ("hot", "cold"), ("big", "small"), ("fast", "slow"), ("happy", "sad"), ("light", "dark"), ("up", "down"),
    ("old", "new"), ("early", "late"), ("full", "empty"), ("open", "closed"), ("strong", "weak"), ("high", "low"),
)
ANIMALS = (
    # name, class, habitat, food, trait
    ("cat", "mammal", "homes and farms", "meat and fish", "has sharp claws and sees well at night"),
    ("dog", "mammal", "homes all over the world", "meat and dog food", "has a very good sense of smell"),
    ("eagle", "bird", "mountains and forests", "fish and small animals", "can see prey from far away"),
    ("shark", "fish", "the ocean", "fish and seals", "has many rows of teeth"),
    ("frog", "amphibian", "ponds and wet forests", "insects", "can jump many times its own length"),
    ("snake", "reptile", "deserts, forests and fields", "mice and eggs", "has no legs and smells with its tongue"),
    ("horse", "mammal", "farms and open grassland", "grass and hay", "can sleep while standing up"),
    ("owl", "bird", "forests and barns", "mice and insects", "hunts at night and flies almost silently"),
    ("whale", "mammal", "the ocean", "krill and small fish", "breathes air through a blowhole"),
    ("bee", "insect", "gardens and meadows", "nectar and pollen", "makes honey and lives in a hive"),
)
REVIEWS = (
    ("I loved this movie, the acting was wonderful.", "positive"),
    ("The food was cold and the service was slow.", "negative"),
    ("What a great book, I could not put it down.", "positive"),
    ("This phone broke after two days.", "negative"),
    ("The hotel room was clean and the staff were kind.", "positive"),
    ("The concert was boring and far too long.", "negative"),
    ("My new shoes are comfortable and look great.", "positive"),
    ("The game was a waste of money.", "negative"),
    ("The park is beautiful in the spring.", "positive"),
    ("The bus was late again and I missed my class.", "negative"),
)
PAST_TENSE = (
    ("I walk to school.", "I walked to school."), ("She plays the piano.", "She played the piano."),
    ("They watch a movie.", "They watched a movie."), ("We cook dinner together.", "We cooked dinner together."),
    ("He opens the door.", "He opened the door."), ("The dog jumps over the fence.", "The dog jumped over the fence."),
    ("I clean my room.", "I cleaned my room."), ("She paints a picture.", "She painted a picture."),
)
PASSIVE = (
    ("The cat chased the mouse.", "The mouse was chased by the cat."),
    ("The boy kicked the ball.", "The ball was kicked by the boy."),
    ("The chef cooked the meal.", "The meal was cooked by the chef."),
    ("The girl wrote the letter.", "The letter was written by the girl."),
    ("The wind broke the window.", "The window was broken by the wind."),
    ("The teacher graded the tests.", "The tests were graded by the teacher."),
)
PLURALS = (
    ("cat", "cats"), ("box", "boxes"), ("child", "children"), ("mouse", "mice"), ("city", "cities"),
    ("leaf", "leaves"), ("bus", "buses"), ("foot", "feet"), ("story", "stories"), ("knife", "knives"),
)


def _cot(rng: random.Random) -> tuple[str, str]:
    kind = rng.randrange(3)
    if kind == 0:
        a, b = rng.randint(11, 49), rng.randint(11, 49)
        tens, ones = (a // 10 + b // 10) * 10, a % 10 + b % 10
        return (
            f"What is {a} + {b}? Explain your answer step by step.",
            f"First, add the tens: {a // 10 * 10} + {b // 10 * 10} = {tens}. Next, add the ones: "
            f"{a % 10} + {b % 10} = {ones}. Finally, add the two results: {tens} + {ones} = {a + b}. "
            f"So {a} + {b} = {a + b}.",
        )
    if kind == 1:
        n, price = rng.randint(2, 9), rng.randint(2, 9)
        item = rng.choice(("apples", "pencils", "cookies", "books", "tickets"))
        return (
            f"Tom buys {n} {item}. Each one costs {price} dollars. How much does he pay in total? "
            "Think step by step.",
            f"Tom buys {n} {item}. Each one costs {price} dollars. To find the total, multiply the number of "
            f"{item} by the price: {n} x {price} = {n * price}. So Tom pays {n * price} dollars in total.",
        )
    a, b = rng.randint(20, 90), rng.randint(2, 19)
    return (
        f"Sara has {a} stickers and gives {b} of them to her friend. How many stickers does she have left? "
        "Explain your reasoning.",
        f"Sara starts with {a} stickers. She gives away {b} stickers, so we subtract: {a} - {b} = {a - b}. "
        f"Sara has {a - b} stickers left.",
    )


def _flan(rng: random.Random) -> tuple[str, str]:
    kind = rng.randrange(4)
    if kind == 0:
        country, capital = rng.choice(CAPITALS)
        return f"What is the capital of {country}?", f"The capital of {country} is {capital}."
    if kind == 1:
        word, opposite = rng.choice(OPPOSITES)
        return f"What is the opposite of the word \"{word}\"?", f"The opposite of \"{word}\" is \"{opposite}\"."
    if kind == 2:
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        return f"What is {a} times {b}?", f"{a} times {b} is {a * b}."
    name, klass, habitat, food, trait = rng.choice(ANIMALS)
    return (
        f"Write a short description of the {name}.",
        f"The {name} is a {klass}. It lives in {habitat} and eats {food}. The {name} {trait}. "
        f"Many people find the {name} an interesting animal to learn about.",
    )


def _niv(rng: random.Random) -> tuple[str, str]:
    kind = rng.randrange(3)
    if kind == 0:
        review, label = rng.choice(REVIEWS)
        return (
            f"Definition: classify the sentiment of the review as positive or negative.\nReview: {review}",
            f"The sentiment of the review is {label}.",
        )
    if kind == 1:
        n = rng.randint(10, 999)
        parity = "even" if n % 2 == 0 else "odd"
        return f"Definition: say whether the number is even or odd.\nNumber: {n}", f"The number {n} is {parity}."
    name, klass, *_ = rng.choice(ANIMALS)
    return (
        f"Definition: name the animal class (mammal, bird, fish, reptile, amphibian or insect).\nAnimal: {name}",
        f"The {name} is a {klass}.",
    )


def _t0(rng: random.Random) -> tuple[str, str]:
    kind = rng.randrange(4)
    if kind == 0:
        present, past = rng.choice(PAST_TENSE)
        return f"Rewrite the sentence in the past tense: {present}", past
    if kind == 1:
        active, passive = rng.choice(PASSIVE)
        return f"Rewrite the sentence in the passive voice: {active}", passive
    if kind == 2:
        singular, plural = rng.choice(PLURALS)
        return f"What is the plural of the word \"{singular}\"?", f"The plural of \"{singular}\" is \"{plural}\"."
    country, capital = rng.choice(CAPITALS)
    name = rng.choice(("Anna", "Ben", "Carlos", "Dina", "Emil"))
    return (
        f"Read the passage and answer the question.\nPassage: {name} flew to {capital} last summer. "
        f"{capital} is the capital of {country}, and {name} visited its museums and parks.\n"
        f"Question: Which country did {name} visit?",
        f"{name} visited {country}. The passage says that {name} flew to {capital}, the capital of {country}.",
    )


TASKS: dict[str, Callable[[random.Random], tuple[str, str]]] = {"cot": _cot, "flan": _flan, "niv": _niv, "t0": _t0}


def generate_rows(rows_per_origin: int = DEFAULT_ROWS_PER_ORIGIN, seed: int = DEFAULT_SEED) -> list[dict]:
    """`rows_per_origin` rows for each of the four origins, interleaved; same seed, same rows."""
    rng = random.Random(seed)
    rows = []
    for i in range(rows_per_origin):
        for origin in ORIGINS:
            question, response = TASKS[origin](rng)
            rows.append({
                "id": f"{origin}.{100000 + i * len(ORIGINS) + ORIGINS.index(origin)}",
                "system_prompt": rng.choice(SYSTEM_PROMPTS[origin]),
                "question": question,
                "response": response,
            })
    return rows


def generate_frame(rows_per_origin: int = DEFAULT_ROWS_PER_ORIGIN, seed: int = DEFAULT_SEED):
    """The rows as a pandas DataFrame with exactly the OpenOrca parquet's columns."""
    import pandas as pd

    return pd.DataFrame(generate_rows(rows_per_origin, seed), columns=list(COLUMNS))


def write_parquet(path: str, rows_per_origin: int = DEFAULT_ROWS_PER_ORIGIN, seed: int = DEFAULT_SEED) -> str:
    generate_frame(rows_per_origin, seed).to_parquet(path, index=False)
    return path
