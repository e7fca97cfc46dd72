"""Bad rule files (tests/vectors/routing/bad-*.yaml) are rejected with exactly the ``file:line:
message`` lines each file lists in its ``# expect:`` comments; and how rule files are found."""

from __future__ import annotations

from pathlib import Path

import pytest

from telephony.routing import RulesError, load_rules, parse_rules
from tests.vectors import load_vector, vector_names

BAD = vector_names("routing", "bad-*.yaml")


def expectations(text: str) -> tuple[list[str], list[str] | None]:
    """The ``# expect:`` lines of a vector, and the trunks of its ``# trunks:`` line, if any."""
    expected: list[str] = []
    trunks: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("# expect: "):
            expected.append(line.removeprefix("# expect: "))
        elif line.startswith("# trunks: "):
            trunks = [t.strip() for t in line.removeprefix("# trunks: ").split(",")]
    return expected, trunks


def test_there_is_a_vector_for_every_kind_of_mistake() -> None:
    kinds = {Path(n).stem.removeprefix("bad-") for n in BAD}
    assert kinds >= {
        "yaml-syntax",
        "unknown-key",
        "wrong-types",
        "duplicate-rule",
        "duplicate-destination",
        "unknown-destination",
        "uri",
        "time-window",
        "regex",
        "ring-timeout",
        "empty-chain",
        "unknown-trunk",
        "metadata-conflict",
    }


@pytest.mark.parametrize("name", BAD, ids=[Path(n).stem for n in BAD])
def test_bad_rule_file_is_rejected_with_file_and_line(name: str) -> None:
    text = load_vector(name).decode()
    expected, trunks = expectations(text)
    assert expected, f"{name} lists no '# expect:' line"
    with pytest.raises(RulesError) as err:
        parse_rules([(Path(name).name, text)], trunks=trunks)
    assert [str(p) for p in err.value.problems] == expected
    assert str(err.value) == "\n".join(expected)


def test_unknown_trunk_is_only_checked_when_trunks_are_given() -> None:
    text = load_vector("routing/bad-unknown-trunk.yaml").decode()
    rules = parse_rules([("t.yaml", text)])
    assert rules.rules[0].conditions.trunks == ("psap-a", "psap-c")
    rules = parse_rules([("t.yaml", text)], trunks={"psap-a", "psap-b", "psap-c"})
    assert rules.rules[0].name == "psap-c-calls"


def test_problems_of_every_file_are_reported_at_once_in_file_order() -> None:
    files = [(Path(n).name, load_vector(n).decode()) for n in BAD if "trunk" not in n]
    with pytest.raises(RulesError) as err:
        parse_rules(files)
    seen = [p.file for p in err.value.problems]
    assert seen == sorted(seen)  # the vectors are named in file-name order
    assert set(seen) == {f for f, _ in files}


def test_load_rules_reads_a_directory_in_file_name_order(tmp_path: Path) -> None:
    names = vector_names("routing/order")
    for n in reversed(names):  # created in reverse: the order must come from the names
        (tmp_path / Path(n).name).write_bytes(load_vector(n))
    (tmp_path / "README.txt").write_text("not a rule file")
    rules = load_rules(tmp_path)
    assert [Path(s).name for s in rules.sources] == [Path(n).name for n in names]
    assert [r.name for r in rules.rules] == ["psap-a-all", "l3-stays", "rest"]
    assert load_rules([tmp_path / "30-destinations.yaml"]).rules[0].name == "rest"


def test_load_rules_problems_with_the_files_themselves(tmp_path: Path) -> None:
    with pytest.raises(RulesError) as err:
        load_rules(tmp_path)
    assert err.value.messages == [f"{tmp_path}: no *.yaml rule files found"]
    (tmp_path / "10-a.yml").write_text("rules: []\n")
    (tmp_path / "20-b.yaml").write_bytes(b"rules: \xff\n")
    with pytest.raises(RulesError) as err:
        load_rules(tmp_path)
    assert err.value.messages[0] == (
        f"{tmp_path}/10-a.yml: only *.yaml files are loaded: rename it or move it away"
    )
    assert err.value.messages[1].startswith(f"{tmp_path}/20-b.yaml: cannot read: ")
    with pytest.raises(RulesError) as err:
        load_rules(tmp_path / "missing.yaml")
    assert err.value.messages[0].startswith(f"{tmp_path}/missing.yaml: cannot read: ")


def test_files_without_rules_are_rejected() -> None:
    with pytest.raises(RulesError) as err:
        parse_rules([("a.yaml", "# nothing yet\n"), ("b.yaml", "destinations: {}\n")])
    assert err.value.messages == ["a.yaml, b.yaml: no rules: nothing would route a call"]
