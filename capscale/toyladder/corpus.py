"""Seeded synthetic training corpus drawn from a ``World``: four kinds of short documents.

* facts      ``Zorvak lives in Varnholm. Bemiku works as a potter.`` — entities are mentioned with
             Zipf frequencies, so a model absorbs the frequent ones first and the rare ones only
             with more parameters or more tokens (gradual knowledge).
* arithmetic ``372 + 451 = 823`` lines, operands of 1/2/3 digits (10/30/60%); digits are single
             tokens (see tokenizer.py); the task sums (3+3 digits) are held out, so exact answers
             need the carry rule, not recall (emergent-looking exact match).
* copy       ``Note: the red cat sees the moon. Again: the red cat sees the moon.`` — random
             sentences, so the only way to predict the repeat is to copy from context.
* proverbs   ``As they say, the quiet river feeds the valley.`` — a few fixed phrases repeated
             very often; the override task asks to copy an altered one instead (a distractor
             that memorisation pulls one way and copying the other).

Documents are plain strings; the token stream joins them with the EOS token.
"""

from __future__ import annotations

import random
from itertools import accumulate

from capscale.toyladder.world import ADJECTIVES, NOUNS, VERBS, World

DOC_KINDS = ("facts", "arithmetic", "copy", "proverb")
DOC_WEIGHTS = (0.45, 0.25, 0.18, 0.12)  # share of documents (not tokens): recipe A
# Recipes differ only in the document mix (same world, tokenizer, sizes and tasks), like the data
# recipes of DataDecide: B moves facts into arithmetic and copy into proverbs.
RECIPES = {"A": DOC_WEIGHTS, "B": (0.25, 0.45, 0.15, 0.15)}
OPERAND_DIGITS = ((1, 2, 3), (0.1, 0.3, 0.6))
PROVERB_LEADS = ("As they say, {}.", "Remember: {}.", "Everyone knows that {}.")
COPY_TEMPLATE = "Note: {s}. Again: {s}."


def fact_sentence(world: World, entity: int, relation: str) -> str:
    name = world.entities[entity]
    if relation == "home":
        return f"{name} lives in {world.cities[world.home[entity]]}."
    return f"{name} works as a {world.jobs[world.job[entity]]}."


def fact_prompt(world: World, entity: int, relation: str) -> tuple[str, str]:
    """(context, answer) of a fact exactly as the corpus words it, split before the value."""
    name = world.entities[entity]
    if relation == "home":
        return f"{name} lives in", world.cities[world.home[entity]]
    return f"{name} works as a", world.jobs[world.job[entity]]


def sum_line(a: int, b: int) -> str:
    return f"{a} + {b} = {a + b}"


def random_sentence(rng: random.Random) -> str:
    return f"the {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} {rng.choice(VERBS)} the {rng.choice(NOUNS)}"


class DocumentSampler:
    """Draws documents one at a time; the sequence depends only on (world, seed)."""

    def __init__(self, world: World, seed: int, recipe: str = "A"):
        self.world = world
        # recipe A keeps its original stream; another recipe draws its own documents
        key = f"toy-corpus-{world.seed}-{seed}" if recipe == "A" else f"toy-corpus-{recipe}-{world.seed}-{seed}"
        self.rng = random.Random(key)
        self.entity_cum = list(accumulate(world.entity_p.tolist()))
        self.kind_cum = list(accumulate(RECIPES[recipe]))
        self.proverb_prefixes = {p.prefix() for p in world.proverbs}

    def entity(self) -> int:
        return self.rng.choices(range(len(self.entity_cum)), cum_weights=self.entity_cum)[0]

    def operand(self) -> int:
        digits = self.rng.choices(*OPERAND_DIGITS)[0]
        return self.rng.randrange(0 if digits == 1 else 10 ** (digits - 1), 10**digits)

    def facts(self) -> str:
        n = self.rng.randint(2, 4)
        return " ".join(fact_sentence(self.world, self.entity(), self.rng.choice(("home", "job"))) for _ in range(n))

    def arithmetic(self) -> str:
        n, lines = self.rng.randint(3, 6), []
        while len(lines) < n:
            a, b = self.operand(), self.operand()
            if not self.world.is_heldout(a, b):
                lines.append(sum_line(a, b))
        return "\n".join(lines)

    def copy(self) -> str:
        while True:
            s = random_sentence(self.rng)
            if s.rsplit(" ", 1)[0] not in self.proverb_prefixes:  # never pair a proverb prefix with another end
                return COPY_TEMPLATE.format(s=s)

    def proverb(self) -> str:
        return self.rng.choice(PROVERB_LEADS).format(self.rng.choice(self.world.proverbs).text())

    def __call__(self) -> str:
        kind = self.rng.choices(DOC_KINDS, cum_weights=self.kind_cum)[0]
        return getattr(self, kind)()


def documents(world: World, seed: int, n: int, recipe: str = "A") -> list[str]:
    """The first ``n`` documents of the corpus of ``recipe`` for ``seed``."""
    sample = DocumentSampler(world, seed, recipe)
    return [sample() for _ in range(n)]
