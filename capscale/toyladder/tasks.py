"""The toy tasks, written from the same ``World`` as the corpus (formats in docs/design.md).

Multiple choice (scored continuation = " " + choice):
* ``facts``    ``Mimek lives in`` → the true city among a popular wrong city, a random wrong city
               and a job (wrong type): distractors of graded plausibility. Entities are spread
               over frequency ranks 1..4000 (``rank`` field), so recall degrades with rarity.
* ``arith``    ``463 + 294 =`` → the sum among near misses ±1 and ±10 (carry mistakes). The sums
               are held out of the corpus.
* ``override`` ``Note: the small key buries the lamp. Again: the small key buries the`` → ``lamp``
               (copy from context) against ``river`` (the proverb's memorised end) and a random noun.
* ``copy``     the same format on sentences that are not proverbs: the copy skill without the
               distractor, to tell the two effects apart.
Generative (exact match, for PassUntil-style sampling):
* ``arith_gen`` ``463 + 294 =`` → ``757`` (stop at newline); ``facts_gen`` ``Mimek lives in`` → ``Folholm``.

Gold positions are balanced within each MC task so a position bias cannot beat chance.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np

from capscale.tasks.jsonl import lm_eval_yaml as jsonl_lm_eval_yaml
from capscale.toyladder.corpus import COPY_TEMPLATE, fact_prompt, random_sentence
from capscale.toyladder.world import N_ENTITIES, NOUNS, World

MC_TASKS = ("facts", "arith", "override", "copy")
GEN_TASKS = ("arith_gen", "facts_gen")
N_ARITH_MC = 300
N_ARITH_GEN = 200
OVERRIDES_PER_PROVERB = 12
N_COPY = 192


def balanced_golds(n: int, n_choices: int, rng: random.Random) -> list[int]:
    golds = [k % n_choices for k in range(n)]
    rng.shuffle(golds)
    return golds


def place(correct: str, distractors: list[str], gold: int) -> list[str]:
    assert correct not in distractors and len(set(distractors)) == len(distractors), (correct, distractors)
    return distractors[:gold] + [correct] + distractors[gold:]


def probe_ranks(n_points: int = 320, n_entities: int = N_ENTITIES) -> list[int]:
    """Entity indices spread evenly in log-rank (all of the top ranks, a sample of the tail)."""
    ranks = np.unique(np.round(np.logspace(0, np.log10(n_entities), n_points)).astype(int))
    return [int(r) - 1 for r in ranks]


def fact_items(world: World, rng: random.Random) -> list[dict]:
    """Four choices: gold, most popular other value, random other value, a value of the other relation."""
    rows = []
    entities = probe_ranks()
    golds = balanced_golds(2 * len(entities), 4, rng)
    for k, (e, relation) in enumerate((e, r) for e in entities for r in ("home", "job")):
        context, answer = fact_prompt(world, e, relation)
        values, other = (world.cities, world.jobs) if relation == "home" else (world.jobs, world.cities)
        popular = next(v for v in values if v != answer)
        rest = [v for v in values if v not in (answer, popular)]
        distractors = [popular, rng.choice(rest), rng.choice(other)]
        kinds = ["popular", "random", "wrong_type"]
        order = list(range(3))
        rng.shuffle(order)
        distractors, kinds = [distractors[i] for i in order], [kinds[i] for i in order]
        g = golds[k]
        rows.append({"id": f"facts-{k:04d}", "context": context, "choices": place(answer, distractors, g), "gold": g,
                     "relation": relation, "rank": e + 1, "kinds": kinds[:g] + ["gold"] + kinds[g:]})
    return rows


def arith_items(world: World, rng: random.Random) -> list[dict]:
    pairs = world.heldout_sums[:N_ARITH_MC]
    golds = balanced_golds(len(pairs), 5, rng)
    rows = []
    for k, (a, b) in enumerate(pairs):
        c = a + b
        misses = [str(c + d) for d in (1, -1, 10, -10)]
        rng.shuffle(misses)
        rows.append({"id": f"arith-{k:04d}", "context": f"{a} + {b} =",
                     "choices": place(str(c), misses, golds[k]), "gold": golds[k]})
    return rows


def copy_context(sentence_prefix: str, end: str) -> str:
    """``Note: <prefix> <end>. Again: <prefix>`` — the corpus's copy document cut before the last word."""
    full = COPY_TEMPLATE.format(s=f"{sentence_prefix} {end}")
    return full[: full.rindex(" ")]


def override_items(world: World, rng: random.Random) -> list[dict]:
    """Altered proverb stated in context; choices: the altered end, the memorised end, another noun."""
    rows = []
    golds = balanced_golds(len(world.proverbs) * OVERRIDES_PER_PROVERB, 3, rng)
    for p in world.proverbs:
        ends = rng.sample([n for n in NOUNS if n not in (p.end, p.noun)], OVERRIDES_PER_PROVERB)
        for alt in ends:
            k = len(rows)
            other = rng.choice([n for n in NOUNS if n not in (p.end, p.noun, alt)])
            distractors, kinds = ([p.end, other], ["memorised", "other"]) if rng.random() < 0.5 else \
                ([other, p.end], ["other", "memorised"])
            g = golds[k]
            rows.append({"id": f"override-{k:04d}", "context": copy_context(p.prefix(), alt),
                         "choices": place(alt, distractors, g), "gold": g, "kinds": kinds[:g] + ["gold"] + kinds[g:]})
    return rows


def copy_items(world: World, rng: random.Random) -> list[dict]:
    """Control for ``override``: random non-proverb sentences, choices the copied end and two other nouns."""
    prefixes = {p.prefix() for p in world.proverbs}
    golds = balanced_golds(N_COPY, 3, rng)
    rows = []
    while len(rows) < N_COPY:
        sentence = random_sentence(rng)
        prefix, end = sentence.rsplit(" ", 1)
        if prefix in prefixes:
            continue
        others = rng.sample([n for n in NOUNS if n != end], 2)
        k = len(rows)
        rows.append({"id": f"copy-{k:04d}", "context": copy_context(prefix, end),
                     "choices": place(end, others, golds[k]), "gold": golds[k]})
    return rows


def arith_gen_items(world: World) -> list[dict]:
    pairs = world.heldout_sums[N_ARITH_MC:N_ARITH_MC + N_ARITH_GEN]
    return [{"id": f"arith_gen-{k:04d}", "prompt": f"{a} + {b} =", "answer": str(a + b), "check": "exact",
             "stop": ["\n"], "max_new_tokens": 8} for k, (a, b) in enumerate(pairs)]


def facts_gen_items(world: World) -> list[dict]:
    rows = []
    for k, e in enumerate(probe_ranks(n_points=260)):
        relation = "home" if k % 2 == 0 else "job"
        prompt, answer = fact_prompt(world, e, relation)
        rows.append({"id": f"facts_gen-{k:04d}", "prompt": prompt, "answer": answer, "check": "exact",
                     "stop": ["."], "max_new_tokens": 12, "relation": relation, "rank": e + 1})
    return rows


def build_tasks(world: World) -> dict[str, list[dict]]:
    """Every toy task's items; each task has its own seeded RNG so editing one leaves the others alone."""
    def rng(name: str) -> random.Random:
        return random.Random(f"toy-task-{name}-{world.seed}")

    return {
        "facts": fact_items(world, rng("facts")),
        "arith": arith_items(world, rng("arith")),
        "override": override_items(world, rng("override")),
        "copy": copy_items(world, rng("copy")),
        "arith_gen": arith_gen_items(world),
        "facts_gen": facts_gen_items(world),
    }


def jsonl_text(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def write_tasks(world: World, out_dir: str | Path) -> dict[str, Path]:
    """Write ``<name>.jsonl`` for every task (atomically); returns name -> path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, rows in build_tasks(world).items():
        path = out_dir / f"{name}.jsonl"
        tmp = out_dir / f".{name}.jsonl.tmp"
        tmp.write_text(jsonl_text(rows), encoding="utf-8")
        os.replace(tmp, path)
        paths[name] = path
    return paths


def lm_eval_yaml(name: str, data_file: str) -> str:
    """lm-eval task config that runs one MC JSONL file unchanged (same numbers as capscale's scorer)."""
    header = (f"# lm-eval task for the toy ladder's {name} (written by capscale.toyladder.tasks).\n"
              "# data_files is resolved against the current directory: run lm-eval from the repo root.\n")
    return jsonl_lm_eval_yaml(f"toy_{name}", data_file, header)


def write_lm_eval_yamls(task_dir: str | Path, yaml_dir: str | Path) -> list[Path]:
    """One YAML per MC task in ``yaml_dir`` (kept out of ``task_dir``: a same-stem YAML there is a sidecar)."""
    yaml_dir = Path(yaml_dir)
    yaml_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in MC_TASKS:
        path = yaml_dir / f"toy_{name}.yaml"
        path.write_text(lm_eval_yaml(name, str(Path(task_dir) / f"{name}.jsonl")))
        paths.append(path)
    return paths


if __name__ == "__main__":
    import argparse

    from capscale.toyladder.world import make_world

    parser = argparse.ArgumentParser(description="write the toy tasks (and lm-eval YAMLs) for a seed")
    parser.add_argument("--out", default="evals/tasks/toy")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    written = write_tasks(make_world(args.seed), args.out)
    write_lm_eval_yamls(args.out, Path(args.out) / "lm_eval")
    print("\n".join(str(p) for p in written.values()))
