"""RULER qa_1/qa_2: raw-JSON readers, document choice, generated samples, offline errors (no network)."""

import json
import random
import urllib.request

import pytest

from eval.benchmarks.base import PromptContext
from eval.benchmarks.ruler import Ruler, qa_data
from eval.benchmarks.ruler.qa import choose_documents
from eval.benchmarks.ruler.qa_data import QAPair, locate_qa_file, read_hotpotqa, read_squad
from lava.errors import UserError

SQUAD = {
    "version": "v2.0",
    "data": [
        {
            "title": "Rivers",
            "paragraphs": [
                {
                    "context": "The Nile flows north through Egypt.",
                    "qas": [
                        {"question": "Where does the Nile flow?", "is_impossible": False,
                         "answers": [{"text": "north", "answer_start": 14}, {"text": "north through Egypt", "answer_start": 14}]},
                        {"question": "Who owns the Nile?", "is_impossible": True, "answers": [], "plausible_answers": []},
                    ],
                },
                {
                    "context": "The Amazon carries the most water.",
                    "qas": [{"question": "Which river carries the most water?", "is_impossible": False,
                             "answers": [{"text": "The Amazon", "answer_start": 0}]}],
                },
            ],
        },
        {
            "title": "Mountains",
            "paragraphs": [
                {"context": "Everest is the highest mountain.", "qas": []},
                {"context": "K2 is the second highest mountain.", "qas": []},
                {"context": "Denali is in Alaska.", "qas": [{"question": "Where is Denali?", "is_impossible": False,
                                                             "answers": [{"text": "Alaska", "answer_start": 10}]}]},
            ],
        },
    ],
}  # fmt: skip

HOTPOT = [
    {
        "_id": "a1",
        "question": "Which city hosts the tower?",
        "answer": "Paris",
        "context": [["Eiffel Tower", ["The tower ", "is in Paris."]], ["Louvre", ["A museum."]]],
    },
    {
        "_id": "a2",
        "question": "What is the museum?",
        "answer": "the Louvre",
        "context": [["Louvre", ["A museum."]], ["Seine", ["A river ", "in France."]]],
    },
]


@pytest.fixture(autouse=True)
def no_network(monkeypatch, tmp_path, smollm2_tokenizer):
    """Any download attempt fails as if offline; the cache points at an empty folder.

    The tokenizer is loaded first so that it still comes from the real model cache.
    """

    def offline(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setenv("LAVA_BENCH_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def data_dir(tmp_path):
    folder = tmp_path / "qa"
    folder.mkdir()
    (folder / "dev-v2.0.json").write_text(json.dumps(SQUAD))
    (folder / "hotpotqa.json").write_text(json.dumps(HOTPOT))
    return folder


def test_read_squad_keeps_answerable_questions_and_same_article_distractors():
    pairs, docs = read_squad(SQUAD)
    assert docs == sorted(docs) and len(docs) == 5
    assert [p.query for p in pairs] == [
        "Where does the Nile flow?",
        "Which river carries the most water?",
        "Where is Denali?",
    ]
    nile = pairs[0]
    assert nile.outputs == ("north", "north through Egypt")
    assert [docs[i] for i in nile.context] == ["The Nile flows north through Egypt."]
    assert [docs[i] for i in nile.more_context] == ["The Amazon carries the most water."]
    denali = pairs[2]
    assert sorted(docs[i] for i in denali.more_context) == [
        "Everest is the highest mountain.",
        "K2 is the second highest mountain.",
    ]


def test_read_hotpotqa_joins_title_and_sentences():
    pairs, docs = read_hotpotqa(HOTPOT)
    assert docs == ["Eiffel Tower\nThe tower is in Paris.", "Louvre\nA museum.", "Seine\nA river in France."]
    assert pairs[0].outputs == ("Paris",) and pairs[0].context == (0, 1)
    assert pairs[1].context == (1, 2) and pairs[1].more_context == ()


def test_choose_documents():
    pair = QAPair("q", ("a",), context=(3,), more_context=(5, 7))
    rng = random.Random(0)
    assert choose_documents(pair, 2, 10, rng)[0] == 3
    assert set(choose_documents(pair, 2, 10, rng)) <= {3, 5, 7}
    many = choose_documents(pair, 6, 10, rng)
    assert many[:3] == [3, 5, 7] and len(set(many)) == 6
    assert choose_documents(pair, 25, 10, rng) == [i % 10 for i in range(25)]  # repeats the corpus


def test_qa_samples_from_a_local_folder(smollm2_tokenizer, data_dir):
    bench = Ruler(tasks="all", lengths=[512], num_samples=2, qa_data_dir=str(data_dir), cache=False)
    assert bench.task_names[-2:] == ["qa_1", "qa_2"]
    bench.task_names = ["qa_1", "qa_2"]
    ctx = PromptContext(tokenizer=smollm2_tokenizer, model_name="smollm2-135m", max_prompt_tokens=7500)
    samples = list(bench.samples(ctx))
    assert [s.id for s in samples] == ["qa_1_L512_0", "qa_1_L512_1", "qa_2_L512_0", "qa_2_L512_1"]
    squad, hotpot = samples[0], samples[2]
    assert squad.references == ["north", "north through Egypt"]
    assert "The Nile flows north through Egypt." in squad.prompt
    assert squad.prompt.endswith("\n\nQuestion: Where does the Nile flow?")
    assert squad.prompt.startswith(
        "Answer the question based on the given documents. Only give me the answer and do not output any other "
        "words.\n\nThe following are given documents.\n\nDocument 1:\n"
    )
    assert squad.answer_prefix == " Answer:" and squad.max_new_tokens == 32
    assert hotpot.references == ["Paris"]
    assert "Eiffel Tower\nThe tower is in Paris." in hotpot.prompt
    for s in samples:
        assert s.meta["length_tokens"] <= 512


def test_score_uses_string_match_part_for_qa():
    bench = Ruler(tasks=["qa_1"])
    record = {"task": "qa_1", "prediction": " paris, France", "references": ["Paris", "Lyon"], "meta": {}}
    assert bench.score(record) == {"score": 100.0, "string_match_part": 100.0}


def test_offline_without_data_is_a_one_line_user_error():
    with pytest.raises(UserError) as err:
        locate_qa_file("squad", None, download=True)
    message = str(err.value)
    assert "\n" not in message
    assert "bench.qa_data_dir" in message and "dev-v2.0.json" in message


def test_a_folder_without_the_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="hotpot_dev_distractor_v1.json"):
        locate_qa_file("hotpotqa", str(tmp_path), download=True)


def test_download_lands_in_the_cache(monkeypatch):
    calls = []

    def fake_download(urls, target, timeout=60.0):
        calls.append(urls[0])
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(HOTPOT))

    monkeypatch.setattr(qa_data, "_download", fake_download)
    path = locate_qa_file("hotpotqa", None, download=True)
    assert path == qa_data.qa_cache_dir() / "hotpotqa.json" and path.exists()
    assert calls == ["http://curtis.ml.cmu.edu/datasets/hotpot/hotpot_dev_distractor_v1.json"]
    assert locate_qa_file("hotpotqa", None, download=False) == path  # found without downloading again


def test_failed_download_leaves_no_partial_file():
    with pytest.raises(OSError, match="network disabled"):
        qa_data._download(("http://example.invalid/x.json",), qa_data.qa_cache_dir() / "x.json")
    assert not (qa_data.qa_cache_dir() / "x.json.part").exists()
