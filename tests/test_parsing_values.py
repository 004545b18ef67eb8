"""Completion parsing and SFT target building by value: lenient JSON recovery at the edges of the text, the
accepted subject shapes, the exact reasons, and format_target written out by hand."""
import pytest

from vcap.rewards.parsing import Subject, _loads_lenient, format_target, parse_completion, subjects_from_json


@pytest.mark.parametrize("raw, expected", [
    ('```json\n[{"subject": "a"}]\n```', [{"subject": "a"}]),    # code fence removed
    ('{"subject": "a"} trailing', {"subject": "a"}),              # an object at position 0, then words
    ('x[{"subject": "a"}]y', [{"subject": "a"}]),                 # an array at position 1, one character after
    ('note: [{"subject": "a", "actions": ["b"]}] ok', [{"subject": "a", "actions": ["b"]}]),
])
def test_lenient_json_takes_the_outermost_span(raw, expected):
    assert _loads_lenient(raw) == expected


def test_two_json_values_are_not_merged():
    with pytest.raises(ValueError):  # from the first '[' to the last ']' is not one JSON value
        _loads_lenient('[{"subject": "a"}] and [1]')


def test_a_fenced_json_value_that_is_no_list_says_so():
    parsed = parse_completion('<think>```\n"just text"\n```</think><answer>a</answer>')
    assert parsed.reason == "think block is not structured JSON: think JSON must be a list of subjects"


def test_lenient_json_span_ends_at_the_last_closing_bracket():
    assert _loads_lenient('see [{"subject": "a", "attributes": ["x"]}] end') == [{"subject": "a", "attributes": ["x"]}]
    assert _loads_lenient('[{"subject": "a"}]') == [{"subject": "a"}]


def test_lenient_json_errors_say_what_is_wrong():
    with pytest.raises(ValueError, match=r"^no JSON array or object in think block$"):
        _loads_lenient("plain words")
    with pytest.raises(ValueError, match=r"^unterminated JSON in think block$"):
        _loads_lenient("} then {")


def test_subject_shapes_and_their_errors():
    assert subjects_from_json({"subject": "dog", "actions": "runs"}) == [Subject("dog", [], ["runs"])]  # one dict
    assert subjects_from_json({"name": "cat"}) == [Subject("cat")]  # 'name' stands for 'subject'
    assert subjects_from_json({"subjects": [{"subject": " a ", "attributes": ["x", " "]}]}) == [Subject("a", ["x"])]
    with pytest.raises(ValueError, match=r"^think JSON must be a list of subjects$"):
        subjects_from_json("dog")
    with pytest.raises(ValueError, match=r"^subject #1 is not an object$"):
        subjects_from_json([{"subject": "a"}, 3])
    with pytest.raises(ValueError, match=r"^'attributes' must be a list of strings$"):
        subjects_from_json([{"subject": "a", "attributes": [1]}])
    with pytest.raises(ValueError, match=r"^'actions' must be a list of strings$"):
        subjects_from_json([{"subject": "a", "actions": {"b": 1}}])


def test_parse_keeps_the_think_text_and_gives_exact_reasons():
    good = parse_completion('<think> [{"subject": "a"}] </think><answer> A. </answer>')
    assert good.think == ' [{"subject": "a"}] ' and good.answer == "A." and good.reason is None
    loose = parse_completion('intro <think>[{"subject": "a"}]</think> mid <answer>B</answer>')
    assert (loose.strict_format, loose.answer, loose.reason) == (False, "B", "text outside the <think>/<answer> blocks")
    assert parse_completion("<answer>x</answer>").reason == "no <think>…</think> block"
    # the answer of a strict completion is its own block, not an <answer> quoted inside the think block
    assert parse_completion("<think>see <answer>y</answer></think><answer>z</answer>").answer == "z"
    assert parse_completion('<think>[{"subject": "a"}]</think>').reason == "no <answer>…</answer> block"


def test_format_target_by_hand():
    subjects = [Subject("circle", ["red"], ["moves left"]), Subject("crème dot")]
    assert Subject("dot").to_json() == {"subject": "dot", "attributes": [], "actions": []}
    assert format_target(subjects, "A red circle, café.") == (  # non-ASCII stays as written, not \u escapes
        '<think>[{"subject": "circle", "attributes": ["red"], "actions": ["moves left"]}, '
        '{"subject": "crème dot", "attributes": [], "actions": []}]</think><answer>A red circle, café.</answer>')
