"""Prompt sets and the generation queue: real files in tmp_path, real pipes."""

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from drawpipe.bundled import PROMPT_SETS
from drawpipe.errors import InputFileError, UsageError
from drawpipe.stages.prompts import (CATEGORIES, QueueItem, ask_queue, format_nations, format_queue,
                                     is_safe_folder_name, load_prompt_sets, load_queue, merge_queue,
                                     parse_add, parse_count, queue_repeats)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
NATION_QUESTION = "Nation (number or name, 'done' to finish): "


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")
    return path


@pytest.fixture
def bundled_sets():
    """The prompt sets shipped in prompts/variable_sets.json."""
    return load_prompt_sets(PROMPT_SETS)


@pytest.fixture
def small_sets(tmp_path):
    """Three nations; France has two family variants, Japan has no working prompt."""
    return load_prompt_sets(write_json(tmp_path / "sets.json", [
        {"nation": "France", "category": "family", "prompt": "french family A"},
        {"nation": "France", "category": "working", "prompt": "french worker"},
        {"nation": "South_Korea", "category": "family", "prompt": "korean family"},
        {"nation": "South_Korea", "category": "working", "prompt": "korean worker"},
        {"nation": "France", "category": "family", "prompt": "french family B"},
        {"nation": "Japan", "category": "family", "prompt": "japanese family"},
    ]))


def sets_error(tmp_path, entries) -> str:
    """The message load_prompt_sets raises for ``entries`` written to sets.json."""
    path = write_json(tmp_path / "sets.json", entries)
    with pytest.raises(InputFileError) as caught:
        load_prompt_sets(path)
    return str(caught.value)


GOOD = {"nation": "France", "category": "family", "prompt": "a French family"}


# ---------------------------------------------------------------- bundled file

def test_bundled_file_has_40_nations_times_2_categories(bundled_sets):
    entries = json.loads(PROMPT_SETS.read_text(encoding="utf-8"))
    assert len(entries) == 80
    assert len({(e["nation"], e["category"]) for e in entries}) == 80
    assert len(bundled_sets.nations) == 40
    assert bundled_sets.categories == list(CATEGORIES)
    for nation in bundled_sets.nations:
        for category in CATEGORIES:
            assert len(bundled_sets.variants(nation, category)) == 1


def test_bundled_names_are_safe_ascii_folder_names(bundled_sets):
    for name in bundled_sets.nations + bundled_sets.categories:
        assert is_safe_folder_name(name), name
        assert name.isascii() and " " not in name, name


def test_example_queue_loads(bundled_sets):
    items = load_queue(PROJECT_ROOT / "prompts" / "example_queue.json", bundled_sets)
    assert items and all(item.count == 2 for item in items)


# ---------------------------------------------------------------- prompt-set errors

def test_malformed_json_names_line_and_column(tmp_path):
    path = tmp_path / "sets.json"
    path.write_text('[\n {"nation": "France"\n  "category": "family"}\n]\n', encoding="utf-8")
    with pytest.raises(InputFileError) as caught:
        load_prompt_sets(path)
    assert str(caught.value) == f"{path}: invalid JSON at line 3, column 3: Expecting ',' delimiter"


def test_missing_file(tmp_path):
    with pytest.raises(InputFileError) as caught:
        load_prompt_sets(tmp_path / "nope.json")
    assert str(caught.value) == f"{tmp_path / 'nope.json'}: no such file"


def test_top_level_must_be_a_list(tmp_path):
    path = tmp_path / "sets.json"
    assert sets_error(tmp_path, {"France": "x"}) == (
        f'{path}: expected a JSON list of {{"nation", "category", "prompt"}} objects, got an object'
    )
    assert sets_error(tmp_path, []) == (
        f'{path}: the list is empty; expected {{"nation", "category", "prompt"}} objects'
    )


@pytest.mark.parametrize("entry, message", [
    ({"nation": "France", "category": "family"}, 'missing "prompt"'),
    ({"nation": "France", "category": 3, "prompt": "p"}, '"category" must be a string'),
    ({"nation": None, "category": "family", "prompt": "p"}, '"nation" must be a string'),
    ({"nation": "France", "category": "famliy", "prompt": "p"},
     'unknown category "famliy" (expected family or working)'),
    ({"nation": "France", "category": "family", "prompt": "  "}, '"prompt" is empty'),
    ({"nation": "France", "category": "family", "prompt": "p", "negative_prompt": "x"},
     'unknown key "negative_prompt" (expected "nation", "category", "prompt")'),
    ("France", "expected an object, got a string"),
    ({"nation": "12", "category": "family", "prompt": "p"},
     'nation "12" cannot be a number (numbers pick nations from the list)'),
    ({"nation": "france", "category": "family", "prompt": "p"},
     'nation "france" is spelled "France" in entry 1; use one spelling'),
])
def test_schema_errors_name_the_entry(tmp_path, entry, message):
    assert sets_error(tmp_path, [GOOD, entry]) == f"{tmp_path / 'sets.json'}: entry 2: {message}"


@pytest.mark.parametrize("name, shown", [
    ("../x", '"../x"'),
    ("a/b", '"a/b"'),
    ("", '""'),
    (".hidden", '".hidden"'),
    ("..", '".."'),
    ("a\\b", '"a\\\\b"'),
    ("C:x", '"C:x"'),
    (" France", '" France"'),
    ("France ", '"France "'),
    ("Fr\x00ance", '"Fr\\u0000ance"'),
    ("Fr\nance", '"Fr\\nance"'),
])
def test_unsafe_names_are_refused(tmp_path, name, shown):
    for field in ("nation", "category"):
        entry = dict(GOOD, **{field: name})
        assert sets_error(tmp_path, [GOOD, GOOD, GOOD, entry]) == (
            f"{tmp_path / 'sets.json'}: entry 4: {field} {shown} cannot be used as a folder name"
        )


def test_safe_folder_names():
    for name in ("France", "South_Korea", "Cote d'Ivoire", "S\u00e3o_Tom\u00e9", "a.b"):
        assert is_safe_folder_name(name), name


# ---------------------------------------------------------------- resolving names

def test_resolve_nation_by_number_and_by_name(bundled_sets):
    assert bundled_sets.resolve_nation("1") == bundled_sets.nations[0]
    assert bundled_sets.resolve_nation(" 40 ") == bundled_sets.nations[39]
    for text in ("south korea", "SOUTH-KOREA", "South_Korea", "  south   Korea "):
        assert bundled_sets.resolve_nation(text) == "South_Korea"


def test_resolve_nation_errors(bundled_sets):
    with pytest.raises(UsageError, match=r"^unknown nation 'Frnace' \(did you mean: France\?\)$"):
        bundled_sets.resolve_nation("Frnace")
    with pytest.raises(UsageError) as caught:
        bundled_sets.resolve_nation("Atlantis")
    assert str(caught.value) == "unknown nation 'Atlantis' (generate.py --list-nations lists the 40)"
    with pytest.raises(UsageError) as caught:
        bundled_sets.resolve_nation("Atlantis", listed_above=True)  # at the questions
    assert str(caught.value) == "unknown nation 'Atlantis' (choose one of the 40 above, by number or name)"
    with pytest.raises(UsageError) as caught:
        bundled_sets.resolve_nation("41")
    assert str(caught.value) == "there is no nation number 41 (the list goes from 1 to 40)"
    with pytest.raises(UsageError) as caught:
        bundled_sets.resolve_nation("0")
    assert str(caught.value) == "there is no nation number 0 (the list goes from 1 to 40)"
    with pytest.raises(UsageError) as caught:
        bundled_sets.resolve_nation(" ")
    assert str(caught.value) == "no nation given (type a number 1-40 or a name)"


def test_resolve_category(bundled_sets):
    assert bundled_sets.resolve_category("Family") == "family"
    assert bundled_sets.resolve_category(" WORKING ") == "working"
    with pytest.raises(UsageError) as caught:
        bundled_sets.resolve_category("famly")
    assert str(caught.value) == "unknown category 'famly' (choose family or working)"


def test_variants_are_used_in_turn(small_sets):
    assert small_sets.nations == ["France", "South_Korea", "Japan"]
    assert small_sets.variants("France", "family") == ["french family A", "french family B"]
    prompts = [small_sets.prompt_for("France", "family", n) for n in (1, 2, 3, 4)]
    assert prompts == ["french family A", "french family B", "french family A", "french family B"]
    assert small_sets.prompt_for("France", "working", 7) == "french worker"


def test_a_pair_without_prompts(small_sets):
    with pytest.raises(UsageError) as caught:
        small_sets.variants("Japan", "working")
    assert str(caught.value) == (
        f"{small_sets.path} has no prompt for Japan working: add one or choose another category"
    )


# ---------------------------------------------------------------- --add and counts

def test_parse_add(bundled_sets):
    assert parse_add("south korea:Family:3", bundled_sets) == QueueItem("South_Korea", "family", 3)
    assert parse_add("10:working:12", bundled_sets) == QueueItem(bundled_sets.nations[9], "working", 12)


@pytest.mark.parametrize("spec, message", [
    ("Frnace:family:2", "unknown nation 'Frnace' (did you mean: France?)"),
    ("France:famly:2", "unknown category 'famly' (choose family or working)"),
    ("France:family:0", "count must be a positive integer, got '0'"),
    ("France:family:-1", "count must be a positive integer, got '-1'"),
    ("France:family:x", "count must be a positive integer, got 'x'"),
    ("France:family:", "count must be a positive integer, got ''"),
    ("France:family", "expected NATION:CATEGORY:COUNT (e.g. France:family:3), got 'France:family'"),
    ("France", "expected NATION:CATEGORY:COUNT (e.g. France:family:3), got 'France'"),
    ("a:b:c:d", "expected NATION:CATEGORY:COUNT (e.g. France:family:3), got 'a:b:c:d'"),
])
def test_parse_add_errors(bundled_sets, spec, message):
    with pytest.raises(UsageError) as caught:
        parse_add(spec, bundled_sets)
    assert str(caught.value) == message


def test_parse_count():
    assert parse_count("3") == 3
    assert parse_count(" 12\n") == 12
    for bad in ("0", "-1", "x", "2.5", "", "\u0663"):
        with pytest.raises(UsageError) as caught:
            parse_count(bad)
        assert str(caught.value) == f"count must be a positive integer, got '{bad.strip()}'"


# ---------------------------------------------------------------- queue files

def test_load_queue(tmp_path, bundled_sets):
    path = write_json(tmp_path / "queue.json", [
        {"nation": "south korea", "category": "family", "count": 3},
        {"nation": "France", "category": "Working", "count": 1},
    ])
    assert load_queue(path, bundled_sets) == [
        QueueItem("South_Korea", "family", 3),
        QueueItem("France", "working", 1),
    ]


@pytest.mark.parametrize("entry, message", [
    ({"nation": "France", "category": "family", "count": 0}, "count must be a positive integer, got 0"),
    ({"nation": "France", "category": "family", "count": "3"},
     'count must be a positive integer, got "3"'),
    ({"nation": "France", "category": "family", "count": True},
     "count must be a positive integer, got true"),
    ({"nation": "France", "category": "family", "count": 1.5},
     "count must be a positive integer, got 1.5"),
    ({"nation": "Frnace", "category": "family", "count": 2},
     "unknown nation 'Frnace' (did you mean: France?)"),
    ({"nation": "France", "category": "famly", "count": 2},
     "unknown category 'famly' (choose family or working)"),
    ({"nation": "France", "category": "family"}, 'missing "count"'),
    ({"nation": 7, "category": "family", "count": 2}, '"nation" must be a string'),
])
def test_load_queue_errors(tmp_path, bundled_sets, entry, message):
    path = write_json(tmp_path / "queue.json", [
        {"nation": "Japan", "category": "family", "count": 2},
        entry,
    ])
    with pytest.raises(InputFileError) as caught:
        load_queue(path, bundled_sets)
    assert str(caught.value) == f"{path}: entry 2: {message}"


def test_load_queue_file_errors(tmp_path, bundled_sets):
    with pytest.raises(InputFileError) as caught:
        load_queue("queue.json-that-is-missing", bundled_sets)
    assert str(caught.value) == "queue.json-that-is-missing: no such file"
    path = tmp_path / "queue.json"
    path.write_text('[{"nation": "France", "category": "family", "count": 2},]', encoding="utf-8")
    with pytest.raises(InputFileError) as caught:
        load_queue(path, bundled_sets)
    assert str(caught.value) == (
        f"{path}: invalid JSON at line 1, column 57: Expecting value"
    )


def test_merge_queue_keeps_largest_count_in_first_order():
    items = [
        QueueItem("France", "family", 2),
        QueueItem("Japan", "working", 1),
        QueueItem("France", "family", 5),
        QueueItem("France", "working", 1),
        QueueItem("Japan", "working", 1),
        QueueItem("France", "family", 3),
    ]
    assert merge_queue(items) == [
        QueueItem("France", "family", 5),
        QueueItem("Japan", "working", 1),
        QueueItem("France", "working", 1),
    ]


def test_format_queue():
    items = [QueueItem("Japan", "family", 2), QueueItem("South_Korea", "working", 1)]
    assert format_queue(items) == (
        "Queue: 2 entries, 3 images\n"
        "  Japan        family   2 images\n"
        "  South_Korea  working  1 image"
    )
    assert format_queue([]) == "Queue: empty"


def test_format_nations_lists_every_number_in_columns(bundled_sets):
    listing = format_nations(bundled_sets)
    lines = listing.splitlines()
    assert len(lines) < 40 and all(len(line) <= 80 for line in lines)
    for number, nation in enumerate(bundled_sets.nations, start=1):
        assert f"{number:>2}  {nation}" in listing


# ---------------------------------------------------------------- interactive

def run_ask(sets, answers: str) -> tuple[list[QueueItem], str]:
    out = io.StringIO()
    items = ask_queue(sets, io.StringIO(answers), out)
    return items, out.getvalue()


def test_ask_queue_normal_session(bundled_sets):
    korea = bundled_sets.nations.index("South_Korea") + 1
    items, output = run_ask(bundled_sets, f"{korea}\nfamily\n3\nFrance\nWorking\n2\ndone\n")
    assert items == [QueueItem("South_Korea", "family", 3), QueueItem("France", "working", 2)]
    assert output.startswith(format_nations(bundled_sets))
    assert output.count(NATION_QUESTION) == 3
    assert output.count("Category (family/working): ") == 2
    assert output.count("Number of images: ") == 2
    assert "queued: South_Korea family, 3 images" in output


def test_ask_queue_asks_again_after_a_bad_answer(bundled_sets):
    items, output = run_ask(bundled_sets, "Frnace\n\n99\nFrance\nfamly\nfamily\n0\nx\n4\ndone\n")
    assert items == [QueueItem("France", "family", 4)]
    assert "  unknown nation 'Frnace' (did you mean: France?)\n" in output
    assert "  no nation given (type a number 1-40 or a name)\n" in output
    assert "  there is no nation number 99 (the list goes from 1 to 40)\n" in output
    assert "  unknown category 'famly' (choose family or working)\n" in output
    assert "  count must be a positive integer, got '0'\n" in output
    assert "  count must be a positive integer, got 'x'\n" in output
    assert output.count(NATION_QUESTION) == 5
    assert output.count("Category (family/working): ") == 2
    assert output.count("Number of images: ") == 3


def test_ask_queue_merges_repeated_choices_and_says_so(bundled_sets):
    items, output = run_ask(bundled_sets, "France\nfamily\n2\nfrance\nFAMILY\n5\nAtlantis\ndone\n")
    assert items == [QueueItem("France", "family", 5)]
    assert ("  queued: France family, 5 images (asked for 2 and 5 images: 5 kept, images 1 to 5; "
            "a count is how many images there are, not how many to add)\n") in output
    assert "  unknown nation 'Atlantis' (choose one of the 40 above, by number or name)\n" in output


def test_queue_repeats_say_what_was_kept():
    items = [QueueItem("France", "family", 5), QueueItem("Japan", "working", 1),
             QueueItem("France", "family", 3)]
    assert queue_repeats(items) == [
        "France family: asked for 5 and 3 images: 5 kept, images 1 to 5; a count is how many "
        "images there are, not how many to add"]


def test_ask_queue_refuses_a_category_without_prompts(small_sets):
    items, output = run_ask(small_sets, "Japan\nworking\nfamily\n1\n")
    assert items == [QueueItem("Japan", "family", 1)]
    assert "has no prompt for Japan working" in output


def test_ask_queue_end_of_input_after_an_item_means_done(bundled_sets):
    items, output = run_ask(bundled_sets, "France\nfamily\n2\n")
    assert items == [QueueItem("France", "family", 2)]
    assert output.endswith(NATION_QUESTION + "\n")


def test_ask_queue_end_of_input_mid_item_keeps_the_finished_ones(bundled_sets):
    items, output = run_ask(bundled_sets, "France\nfamily\n2\nJapan\nworking\n")
    assert items == [QueueItem("France", "family", 2)]
    assert "input ended before Japan was complete; it is not queued" in output


@pytest.mark.parametrize("answers", ["", "France\n", "France\nfamily\n", "Frnace\n"])
def test_ask_queue_end_of_input_with_nothing_queued(bundled_sets, answers):
    with pytest.raises(UsageError) as caught:
        run_ask(bundled_sets, answers)
    message = str(caught.value)
    assert message.startswith("no images queued: the input ended before")
    assert "--add NATION:CATEGORY:COUNT" in message and "\n" not in message


def test_ask_queue_done_with_nothing_queued(bundled_sets):
    with pytest.raises(UsageError) as caught:
        run_ask(bundled_sets, "done\n")
    assert str(caught.value) == (
        "no images queued: choose a nation, a category and a number of images before "
        "'done', or use --add NATION:CATEGORY:COUNT or --queue FILE"
    )


def test_ask_queue_reads_piped_stdin_in_a_real_process():
    code = (
        "import sys; from drawpipe.stages.prompts import *; from drawpipe.bundled import PROMPT_SETS; "
        "sets = load_prompt_sets(PROMPT_SETS); "
        "items = ask_queue(sets, sys.stdin, sys.stderr); "
        "print(format_queue(items))"
    )
    # like: printf '12\nfamily\n3\nKenya\nworking\n1\ndone\n' | python -c ...
    result = subprocess.run(
        [sys.executable, "-c", code],
        input="12\nfamily\n3\nKenya\nworking\n1\ndone\n",
        capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    twelfth = load_prompt_sets(PROMPT_SETS).nations[11]
    assert result.stdout == format_queue(
        [QueueItem(twelfth, "family", 3), QueueItem("Kenya", "working", 1)]
    ) + "\n"
    assert result.stderr.count(NATION_QUESTION) == 3
