"""Generate capscale's own small multiple-choice tasks as JSONL (format in docs/design.md).

The tasks are written for this project so we can ship, test and benchmark without
network access or licences. Everything is derived from word lists in this file and a fixed
seed per task, so running ``python evals/tasks/make_tasks.py`` rewrites the same bytes;
``--check`` verifies that instead of writing (useful in tests/CI).

Gold positions are balanced: each task's gold indices are a shuffled list holding every
position equally often, so a model with a position bias cannot score above chance.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
N_CHOICES = 4


# ---------------------------------------------------------------- shared helpers

def balanced_golds(n: int, rng: random.Random) -> list[int]:
    """Gold index for each of ``n`` items, every position used n/4 times (+-1), in random order."""
    golds = [k % N_CHOICES for k in range(n)]
    rng.shuffle(golds)
    return golds


def place(correct: str, distractors: list[str], gold: int) -> list[str]:
    """Put the correct answer at index ``gold`` among the distractors (kept in the given order)."""
    assert len(distractors) == N_CHOICES - 1 and correct not in distractors, (correct, distractors)
    assert len(set(distractors)) == len(distractors), distractors
    return distractors[:gold] + [correct] + distractors[gold:]


def item(prefix: str, k: int, context: str, choices: list[str], gold: int) -> dict:
    return {"id": f"{prefix}-{k:04d}", "context": context, "choices": choices, "gold": gold}


def jsonl_bytes(items: list[dict]) -> bytes:
    """Serialize deterministically: fixed key order, ASCII, '\\n' line ends."""
    lines = [json.dumps(x, ensure_ascii=True) for x in items]
    return ("\n".join(lines) + "\n").encode("ascii")


# ---------------------------------------------------------------- arithmetic_mc

def arithmetic_distractors(a: int, b: int, op: str, answer: int, rng: random.Random) -> list[str]:
    """Near misses a careless calculator makes: off by one, off by ten, a wrong carry, digits swapped."""
    pool = [answer + 1, answer - 1, answer + 10, answer - 10, answer + 2, answer - 2]
    s = str(answer)
    if len(s) >= 2 and s[-1] != s[-2]:
        pool.append(int(s[:-2] + s[-1] + s[-2]))  # last two digits swapped
    if op == "*":
        pool += [a * (b + 1), a * (b - 1), (a + 1) * b]
    if op == "+":
        pool.append(abs(a - b))  # wrong operation
    if op == "-":
        pool.append(a + b)
    seen = {answer}
    unique = []
    for v in pool:
        if v >= 0 and v not in seen:
            seen.add(v)
            unique.append(v)
    rng.shuffle(unique)
    return [str(v) for v in unique[: N_CHOICES - 1]]


def make_arithmetic(n: int = 200, seed: int = 101) -> list[dict]:
    rng = random.Random(seed)
    golds = balanced_golds(n, rng)
    out = []
    for k in range(n):
        op = ["+", "-", "*"][k % 3]
        if op == "+":
            a, b = rng.randint(12, 98), rng.randint(12, 98)
            answer = a + b
        elif op == "-":
            a = rng.randint(30, 99)
            b = rng.randint(11, a - 5)
            answer = a - b
        else:
            a, b = rng.randint(12, 49), rng.randint(3, 9)
            answer = a * b
        context = f"Question: {a} {op} {b} =\nAnswer:"
        wrong = arithmetic_distractors(a, b, op, answer, rng)
        out.append(item("arith", k, context, place(str(answer), wrong, golds[k]), golds[k]))
    return out


# ---------------------------------------------------------------- word_relations

ANTONYMS = [
    ("hot", "cold"), ("big", "small"), ("tall", "short"), ("fast", "slow"), ("early", "late"),
    ("open", "closed"), ("full", "empty"), ("heavy", "light"), ("wet", "dry"), ("rich", "poor"),
    ("strong", "weak"), ("loud", "quiet"), ("hard", "soft"), ("young", "old"), ("thick", "thin"),
    ("deep", "shallow"), ("wide", "narrow"), ("clean", "dirty"), ("happy", "sad"), ("brave", "afraid"),
    ("first", "last"), ("above", "below"), ("inside", "outside"), ("win", "lose"), ("buy", "sell"),
    ("push", "pull"), ("begin", "end"), ("arrive", "leave"), ("remember", "forget"), ("accept", "refuse"),
    ("friend", "enemy"), ("day", "night"), ("north", "south"), ("east", "west"), ("always", "never"),
    ("question", "answer"), ("sharp", "dull"), ("sweet", "bitter"), ("smooth", "rough"), ("cheap", "expensive"),
]

PLURALS = [
    ("mouse", "mice"), ("goose", "geese"), ("child", "children"), ("foot", "feet"), ("tooth", "teeth"),
    ("man", "men"), ("woman", "women"), ("ox", "oxen"), ("leaf", "leaves"), ("knife", "knives"),
    ("wolf", "wolves"), ("half", "halves"), ("shelf", "shelves"), ("loaf", "loaves"), ("box", "boxes"),
    ("bus", "buses"), ("church", "churches"), ("brush", "brushes"), ("city", "cities"), ("berry", "berries"),
    ("lady", "ladies"), ("story", "stories"), ("day", "days"), ("key", "keys"), ("toy", "toys"),
    ("potato", "potatoes"), ("hero", "heroes"), ("piano", "pianos"), ("sheep", "sheep"), ("deer", "deer"),
    ("wife", "wives"), ("calf", "calves"), ("crisis", "crises"), ("cat", "cats"), ("table", "tables"),
    ("glass", "glasses"), ("fox", "foxes"), ("baby", "babies"), ("life", "lives"), ("cherry", "cherries"),
]

PAST_TENSES = [
    ("go", "went"), ("eat", "ate"), ("run", "ran"), ("see", "saw"), ("take", "took"), ("write", "wrote"),
    ("sing", "sang"), ("swim", "swam"), ("drink", "drank"), ("fly", "flew"), ("know", "knew"), ("throw", "threw"),
    ("bring", "brought"), ("think", "thought"), ("buy", "bought"), ("catch", "caught"), ("teach", "taught"),
    ("sleep", "slept"), ("keep", "kept"), ("feel", "felt"), ("leave", "left"), ("make", "made"), ("say", "said"),
    ("stand", "stood"), ("sit", "sat"), ("walk", "walked"), ("jump", "jumped"), ("play", "played"),
    ("carry", "carried"), ("stop", "stopped"), ("plan", "planned"), ("cut", "cut"), ("put", "put"),
    ("speak", "spoke"), ("break", "broke"), ("choose", "chose"), ("freeze", "froze"), ("ride", "rode"),
    ("grow", "grew"), ("draw", "drew"),
]

YOUNG = [
    ("dog", "puppy"), ("cat", "kitten"), ("cow", "calf"), ("sheep", "lamb"), ("horse", "foal"),
    ("goose", "gosling"), ("frog", "tadpole"), ("bear", "cub"), ("duck", "duckling"), ("goat", "kid"),
    ("pig", "piglet"), ("swan", "cygnet"), ("owl", "owlet"), ("kangaroo", "joey"), ("deer", "fawn"),
    ("hen", "chick"), ("eagle", "eaglet"), ("hare", "leveret"), ("seal", "pup"), ("butterfly", "caterpillar"),
]


def wrong_plurals(word: str, right: str) -> list[str]:
    """Forms a learner might produce by applying the wrong rule."""
    cands = [word + "s", word + "es", word, word + "en", right + "s", right + "es"]
    if word.endswith("y"):
        cands.append(word[:-1] + "ies")
    if word.endswith("f") or word.endswith("fe"):
        cands.append(word.rstrip("e")[:-1] + "ves")
    return [c for c in dict.fromkeys(cands) if c != right]


def wrong_pasts(word: str, right: str) -> list[str]:
    cands = [word + "ed", word + "d", word, right + "ed", word + "en", word + "s"]
    if word.endswith("y"):
        cands.append(word[:-1] + "ied")
    return [c for c in dict.fromkeys(cands) if c != right]


def make_word_relations(seed: int = 202) -> list[dict]:
    """Four relation types, 40 items each (young animals: 20 + 20 reversed analogies)."""
    rng = random.Random(seed)
    specs = []  # (context, correct, distractor pool)
    antonym_words = [w for pair in ANTONYMS for w in pair]
    for a, b in ANTONYMS:
        x, y = (a, b) if rng.random() < 0.5 else (b, a)
        pool = [w for w in antonym_words if w not in (x, y)]
        specs.append((f'Question: What is the opposite of "{x}"?\nAnswer:', y, rng.sample(pool, 3)))
    for word, right in PLURALS:
        specs.append((f'Question: What is the plural of "{word}"?\nAnswer:', right, rng.sample(wrong_plurals(word, right), 3)))
    for word, right in PAST_TENSES:
        specs.append((f'Question: What is the past tense of "{word}"?\nAnswer:', right, rng.sample(wrong_pasts(word, right), 3)))
    young_words = sorted({y for _, y in YOUNG})
    adult_words = sorted({a for a, _ in YOUNG})
    for k, (adult, young) in enumerate(YOUNG):
        a2, y2 = YOUNG[(k + 1 + rng.randrange(len(YOUNG) - 1)) % len(YOUNG)]
        if y2 == young:
            a2, y2 = YOUNG[(k + 1) % len(YOUNG)]
        pool = [w for w in young_words if w not in (young, y2)]
        specs.append((f"Complete the analogy.\n{a2} is to {y2} as {adult} is to", young, rng.sample(pool, 3)))
        pool = [w for w in adult_words if w not in (adult, a2)]
        specs.append((f"Complete the analogy.\n{y2} is to {a2} as {young} is to", adult, rng.sample(pool, 3)))
    golds = balanced_golds(len(specs), rng)
    return [item("wrel", k, ctx, place(right, wrong, golds[k]), golds[k])
            for k, (ctx, right, wrong) in enumerate(specs)]


# ---------------------------------------------------------------- fiveshot_facts

ONSETS = ["br", "k", "t", "v", "m", "s", "dr", "l", "qu", "z", "f", "gr", "h", "n", "th", "p"]
VOWELS = ["a", "e", "i", "o", "u", "ae", "ei", "ou"]
CODAS = ["n", "l", "r", "s", "th", "m", "v", "nd", "sk", ""]
TOWN_ENDS = ["moor", "ford", "wick", "holm", "stead", "mere", "by", "gate", "haven", "dale"]
TRADES = [
    "lamp maker", "river pilot", "beekeeper", "clock mender", "rope twister", "salt trader", "map engraver",
    "bell founder", "glass blower", "kite builder", "cheese ager", "boat caulker", "paint mixer", "loom tuner",
    "fruit grower", "seed merchant", "drum stretcher", "tile painter", "lock smith", "well digger",
]
OBJECTS = [
    "a copper kettle", "a cracked telescope", "three brass lanterns", "a blue wooden chest", "a silver fiddle",
    "an old iron anvil", "a jar of river stones", "a stuffed grey heron", "two clay owls", "a painted sled",
    "a box of tin soldiers", "a broken weather vane", "a green glass bottle", "a wicker birdcage",
    "a stack of sea charts", "a carved walking stick", "a pair of bone dice", "a velvet hat", "a spinning top",
    "a tall hourglass",
]
SEASONS = ["spring", "summer", "autumn", "winter"]
COLORS = ["pale green", "deep red", "dusty yellow", "bright orange", "dark blue", "soft grey", "warm brown",
          "pure white", "faded purple", "shiny gold"]
TRAVEL = ["by mule cart", "on a tall bicycle", "by river barge", "on foot along the canal", "by night coach", "on a grey pony"]
PREAMBLE = ("The records below describe invented people from invented towns. "
            "Read each record, then answer the question about it using only what the record says.\n\n")

# attribute -> (question template, answer template); answers are short noun phrases
QUESTIONS = {
    "town": ("Where does {name} live?", "in the town of {town}"),
    "trade": ("What does {name} do for a living?", "works as a {trade}"),
    "object": ("What does {name} keep at home?", "{object}"),
    "born": ("When was {name} born?", "in the {season} of {year}"),
    "color": ("Which color does {name} like best?", "the color {color}"),
    "travel": ("How does {name} travel to the market?", "{travel}"),
}


def invented_word(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS) for _ in range(syllables))


def invented_person(rng: random.Random) -> dict:
    return {
        "name": f"{invented_word(rng, 2).title()} {invented_word(rng, rng.choice([2, 3])).title()}",
        "town": invented_word(rng, 1).title() + rng.choice(TOWN_ENDS),
        "trade": rng.choice(TRADES),
        "object": rng.choice(OBJECTS),
        "season": rng.choice(SEASONS),
        "year": str(rng.randint(1700, 1899)),
        "color": rng.choice(COLORS),
        "travel": rng.choice(TRAVEL),
        "siblings": rng.randint(0, 7),
    }


def record_text(p: dict) -> str:
    siblings = {0: "no brothers or sisters", 1: "one sister"}.get(p["siblings"], f"{p['siblings']} brothers and sisters")
    return (
        f"Record: {p['name']} was born in the {p['season']} of {p['year']} and lives in the town of {p['town']}, "
        f"where {p['name'].split()[0]} works as a {p['trade']}. At home {p['name'].split()[0]} keeps {p['object']}, "
        f"likes {p['color']} better than any other color, travels to the market {p['travel']} "
        f"and has {siblings}."
    )


def answer_text(p: dict, attr: str) -> str:
    return QUESTIONS[attr][1].format(**p)


def make_fiveshot_facts(n: int = 240, seed: int = 303, shots: int = 5) -> list[dict]:
    """Each item: 5 solved record/question/answer examples, then a new record and its question.

    The three distractors are answers to the same question for other people, mostly taken
    from the examples in the same context, so copying any answer-shaped span scores at
    chance: the model has to bind the answer to the right record.
    """
    rng = random.Random(seed)
    golds = balanced_golds(n, rng)
    attrs = list(QUESTIONS)
    out = []
    for k in range(n):
        people = []
        names = set()
        while len(people) < shots + 1:
            p = invented_person(rng)
            if p["name"] not in names:
                names.add(p["name"])
                people.append(p)
        blocks = []
        for p in people[:shots]:
            attr = rng.choice(attrs)
            blocks.append(f"{record_text(p)}\nQuestion: {QUESTIONS[attr][0].format(**p)}\nAnswer: {answer_text(p, attr)}")
        query = people[shots]
        attr = attrs[k % len(attrs)]
        blocks.append(f"{record_text(query)}\nQuestion: {QUESTIONS[attr][0].format(**query)}\nAnswer:")
        correct = answer_text(query, attr)
        wrong: list[str] = []
        for p in people[:shots]:
            a = answer_text(p, attr)
            if a != correct and a not in wrong:
                wrong.append(a)
        while len(wrong) < N_CHOICES - 1:  # too few distinct values among the shots: invent more
            a = answer_text(invented_person(rng), attr)
            if a != correct and a not in wrong:
                wrong.append(a)
        wrong = rng.sample(wrong, N_CHOICES - 1)
        context = PREAMBLE + "\n\n".join(blocks)
        out.append(item("facts", k, context, place(correct, wrong, golds[k]), golds[k]))
    return out


# ---------------------------------------------------------------- main

TASKS = {
    "arithmetic_mc": make_arithmetic,
    "word_relations": make_word_relations,
    "fiveshot_facts": make_fiveshot_facts,
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", default=str(HERE), help="where to write <task>.jsonl (default: next to this script)")
    ap.add_argument("--check", action="store_true", help="verify the files on disk match instead of writing")
    args = ap.parse_args(argv)
    out_dir = Path(args.out_dir)
    stale = []
    for name, make in TASKS.items():
        items = make()
        data = jsonl_bytes(items)
        path = out_dir / f"{name}.jsonl"
        if args.check:
            if not path.exists() or path.read_bytes() != data:
                stale.append(str(path))
            continue
        path.write_bytes(data)
        golds = [x["gold"] for x in items]
        print(f"{path}: {len(items)} items, gold counts {[golds.count(g) for g in range(N_CHOICES)]}")
    if stale:
        print("out of date (rerun evals/tasks/make_tasks.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
