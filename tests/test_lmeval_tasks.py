"""lm-eval tasks become MCItems whose strings are exactly what lm-eval sends to a model.

The reference is lm-eval itself: we run ``simple_evaluate`` with a model that only records
its loglikelihood requests, so the test checks against the real harness path (task loading,
num_fewshot override, few-shot seeding), not against our reading of it.
"""

from __future__ import annotations

import json

import pytest
import yaml

from capscale.errors import TaskFormatError
from capscale.tasks.lmeval import load_lmeval_task

pytest.importorskip("lm_eval")

TEST_DOCS = [
    {"id": "q1", "context": "Q: What is 1+1?\nA:", "choices": ["2", "3", "11"], "gold": 0},
    {"id": "q2", "context": "Q: Capital of France?\nA:", "choices": ["Lyon", "Paris"], "gold": 1},
    {"id": "q3", "context": "Q: Colour of the sky?\nAnswer: ", "choices": ["blue", "green"], "gold": 0},
    {"id": "q4", "context": "Q: 3 squared?\nA:", "choices": ["6", "9", "33", "1"], "gold": 1},
    {"id": "q5", "context": "Q: Opposite of hot?\nA:", "choices": ["cold", "warm"], "gold": 0},
    {"id": "q6", "context": "Q: Legs on a spider?\nA:", "choices": ["six", "eight"], "gold": 1},
]
TRAIN_DOCS = [
    {"id": f"t{i}", "context": f"Q: {i} plus {i}?\nA:", "choices": [str(2 * i), str(2 * i + 1)], "gold": 0}
    for i in range(10)
]
# Two docs share an id, so item ids must fall back to the doc index.
NO_UNIQUE_ID_DOCS = [dict(doc, id="same") for doc in TEST_DOCS[:3]]
MULTI_GOLD_DOCS = [dict(TEST_DOCS[0], golds=[0, 2])]

DESCRIPTION = "The following are questions with answers.\n\n"


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_task(dir_, name, files, **extra):
    """A task YAML over local JSONL files; the datasets cache goes under tmp as well.

    ``extra`` overrides the defaults below; a value of None removes the key.
    """
    config = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {
            "data_files": {split: str(path) for split, path in files.items()},
            "cache_dir": str(dir_ / "hf_cache"),
        },
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{context}}",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{gold}}",
        "metric_list": [{"metric": "acc"}],
    }
    config.update(extra)
    config = {key: value for key, value in config.items() if value is not None}
    (dir_ / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("lmeval_tasks")
    test = write_jsonl(d / "test.jsonl", TEST_DOCS)
    train = write_jsonl(d / "train.jsonl", TRAIN_DOCS)
    both = {"test": test, "train": train}
    write_task(d, "toymc", {"test": test})
    write_task(d, "toymc_fewshot", both, fewshot_split="train", description=DESCRIPTION)
    write_task(d, "toymc_newline", both, fewshot_split="train", target_delimiter="\n")
    write_task(d, "toymc_first_n", both, fewshot_split="train", description=DESCRIPTION,
               fewshot_config={"sampler": "first_n"})
    write_task(d, "toymc_noid", {"test": write_jsonl(d / "noid.jsonl", NO_UNIQUE_ID_DOCS)})
    write_task(
        d, "toymc_multigold", {"test": write_jsonl(d / "multi.jsonl", MULTI_GOLD_DOCS)},
        doc_to_target="{{golds}}",
    )
    write_task(
        d, "toygen", {"test": test}, output_type="generate_until",
        doc_to_choice=None, generation_kwargs={"until": ["\n"]},
    )
    (d / "toygroup.yaml").write_text(yaml.safe_dump({"group": "toygroup", "task": ["toymc", "toymc_noid"]}))
    return d


@pytest.fixture(scope="module")
def task_manager(task_dir):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(task_dir), include_defaults=False)


def lmeval_requests(task_manager, name, num_fewshot=None, limit=None):
    """{(doc_id, choice_idx): (context, continuation)} as simple_evaluate sends them to a model."""
    from lm_eval import simple_evaluate
    from lm_eval.api.model import LM

    class RecordingLM(LM):
        def __init__(self):
            super().__init__()
            self.seen = {}

        def loglikelihood(self, requests):
            for r in requests:
                self.seen[(r.doc_id, r.idx)] = r.args
            return [(0.0, False)] * len(requests)

        def loglikelihood_rolling(self, requests):
            raise AssertionError("not a multiple-choice request")

        def generate_until(self, requests):
            raise AssertionError("not a multiple-choice request")

    lm = RecordingLM()
    simple_evaluate(
        model=lm, tasks=[name], num_fewshot=num_fewshot, limit=limit,
        task_manager=task_manager, bootstrap_iters=0, log_samples=False,
    )
    return lm.seen


def assert_same_strings(task, requests):
    """Every (context, delimiter + choice) pair equals lm-eval's request, and nothing is missing."""
    ours = {}
    for doc_id, item in enumerate(task.items):
        for j in range(len(item.choices)):
            ours[(doc_id, j)] = (item.context, item.continuation(j))
    assert ours == requests


def test_zero_shot_matches_lmeval_requests(task_dir, task_manager):
    task = load_lmeval_task("toymc", include_path=str(task_dir))
    assert_same_strings(task, lmeval_requests(task_manager, "toymc"))
    assert [item.id for item in task.items] == [doc["id"] for doc in TEST_DOCS]
    assert [item.gold for item in task.items] == [doc["gold"] for doc in TEST_DOCS]
    assert task.items[0].choices == ("2", "3", "11") and task.items[0].delimiter == " "
    # lm-eval leaves a context's trailing space in place (the tokenizer step moves it later).
    assert task.items[2].context == "Q: Colour of the sky?\nAnswer: "
    assert task.meta == {"source": "lm-eval", "num_fewshot": 0, "target_delimiter": " ", "fewshot_seed": 1234}


def test_three_shot_with_description_matches_lmeval_requests(task_dir, task_manager):
    task = load_lmeval_task("toymc_fewshot", include_path=str(task_dir), num_fewshot=3)
    assert_same_strings(task, lmeval_requests(task_manager, "toymc_fewshot", num_fewshot=3))
    first = task.items[0].context
    assert first.startswith(DESCRIPTION) and first.endswith(TEST_DOCS[0]["context"])
    assert first.count("\n\n") == 4  # after the description and after each of the 3 shots
    assert task.meta["num_fewshot"] == 3
    # Shots are drawn per doc from one seeded stream: docs differ, runs do not.
    assert len({item.context.removesuffix(doc["context"]) for item, doc in zip(task.items, TEST_DOCS)}) > 1
    again = load_lmeval_task("toymc_fewshot", include_path=str(task_dir), num_fewshot=3)
    assert again.items == task.items


def test_first_n_exemplars_give_every_item_one_block_and_rows_shared_by_items(task_dir, task_manager, tokenizer):
    """MMLU's way (fewshot_config sampler first_n): every doc gets the same exemplars, so capscale packs
    several items per row (capscale.scoring.loglik.shared_rows) where lm-eval runs the block per choice."""
    from capscale.scoring.encoding import encode_items
    from capscale.scoring.loglik import MIN_SHARED_PREFIX, shared_rows
    from capscale.scoring.packing import group_by_context, shared_prefix_clusters

    task = load_lmeval_task("toymc_first_n", include_path=str(task_dir), num_fewshot=3)
    assert_same_strings(task, lmeval_requests(task_manager, "toymc_first_n", num_fewshot=3))
    assert len({item.context.removesuffix(doc["context"]) for item, doc in zip(task.items, TEST_DOCS)}) == 1
    groups = group_by_context(encode_items(tokenizer, task.items, 4096))
    (prefix, members), = shared_prefix_clusters(groups, MIN_SHARED_PREFIX)
    assert len(members) == len(TEST_DOCS) and prefix >= len(tokenizer.encode(DESCRIPTION)) + 3 * 4
    assert len(shared_rows(groups, d_model=64)) < len(groups)


def test_limit_keeps_the_first_items_unchanged(task_dir, task_manager):
    full = load_lmeval_task("toymc_fewshot", include_path=str(task_dir), num_fewshot=3)
    head = load_lmeval_task("toymc_fewshot", include_path=str(task_dir), num_fewshot=3, limit=2)
    assert head.items == full.items[:2]


def test_generate_until_task_is_rejected(task_dir):
    with pytest.raises(TaskFormatError, match=r"toygen.*generate_until"):
        load_lmeval_task("toygen", include_path=str(task_dir))


def test_custom_target_delimiter_round_trips(task_dir, task_manager):
    task = load_lmeval_task("toymc_newline", include_path=str(task_dir), num_fewshot=2)
    assert_same_strings(task, lmeval_requests(task_manager, "toymc_newline", num_fewshot=2))
    assert all(item.delimiter == "\n" for item in task.items)
    assert task.items[1].continuation(1) == "\nParis"
    assert task.meta["target_delimiter"] == "\n"


def test_ids_fall_back_to_doc_index_when_not_unique(task_dir):
    task = load_lmeval_task("toymc_noid", include_path=str(task_dir))
    assert [item.id for item in task.items] == ["0", "1", "2"]


def test_several_gold_answers_are_rejected(task_dir):
    with pytest.raises(TaskFormatError, match=r"doc 'q1'.*several gold"):
        load_lmeval_task("toymc_multigold", include_path=str(task_dir))


def test_group_name_is_rejected(task_dir):
    with pytest.raises(TaskFormatError, match=r"toygroup.*group of 2 tasks \(toymc, toymc_noid\)"):
        load_lmeval_task("toygroup", include_path=str(task_dir))


def test_unknown_task_lists_close_names(task_dir, monkeypatch):
    # Skip indexing lm-eval's built-in tasks (slow): only our folder is searched.
    import lm_eval.tasks

    real = lm_eval.tasks.TaskManager
    monkeypatch.setattr(
        lm_eval.tasks, "TaskManager",
        lambda include_path=None, include_defaults=True: real(include_path=include_path, include_defaults=False),
    )
    with pytest.raises(TaskFormatError, match=r"unknown lm-eval task 'toymcc'.*toymc"):
        load_lmeval_task("toymcc", include_path=str(task_dir))
