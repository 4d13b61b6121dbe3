import json

import pytest

from qbench.errors import ConfigError, QBenchError, UnknownNameError
from qbench.prompts import load_prompts


def test_coco2017_first_caption_rule():
    p = load_prompts("coco2017:3")
    assert [x.id for x in p] == ["coco2017/139/372891", "coco2017/285/652864", "coco2017/632/301804"]
    assert p[0].text == "A woman stands in the dining area at the table."
    assert [x.index for x in p] == [0, 1, 2]
    assert len(load_prompts("coco2017")) == 5000


def test_coco2014_file_order():
    p = load_prompts("coco2014-30k:2")
    assert [x.id for x in p] == ["coco2014/521669", "coco2014/116361"]
    assert p[1].text == "so many people using laptops at a meeting"
    assert len(load_prompts("coco2014-30k")) == 30000


def test_prefix_is_stable_subset():
    a, b = load_prompts("coco2017:5"), load_prompts("coco2017:10")
    assert b[:5] == a


def test_txt_jsonl_csv(tmp_path):
    (tmp_path / "p.txt").write_text("a red bus\n\n  two cats  \n")
    p = load_prompts(str(tmp_path / "p.txt"))
    assert [(x.id, x.text, x.index) for x in p] == [("p.txt:0", "a red bus", 0), ("p.txt:2", "two cats", 2)]  # index = row number: seeds stay tied to rows
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps({"id": f"x{i}", "caption": f"cap {i}"}) for i in range(3)))
    p = load_prompts(str(tmp_path / "p.jsonl") + ":2")
    assert [(x.id, x.text) for x in p] == [("p.jsonl:x0", "cap 0"), ("p.jsonl:x1", "cap 1")]
    (tmp_path / "p.csv").write_text("prompt,other\nhello world,1\nsecond,2\n")
    assert [x.text for x in load_prompts(str(tmp_path / "p.csv"))] == ["hello world", "second"]


@pytest.mark.parametrize(
    "content,suffix,match",
    [("", ".txt", "empty"), ("\n\n", ".txt", "empty"), ("a,b\n1,2\n", ".csv", "no caption column"), ("{bad json", ".jsonl", "could not be parsed")],
)
def test_bad_files(tmp_path, content, suffix, match):
    f = tmp_path / f"bad{suffix}"
    f.write_text(content)
    with pytest.raises(QBenchError, match=match):
        load_prompts(str(f))


def test_bad_specs(tmp_path):
    with pytest.raises(QBenchError, match="does not exist"):
        load_prompts(str(tmp_path / "missing.txt"))
    with pytest.raises(UnknownNameError, match="did you mean 'coco2017'"):
        load_prompts("coco2071:4")
    with pytest.raises(ConfigError, match="5000 prompts; 6000 requested"):
        load_prompts("coco2017:6000")
    with pytest.raises(ConfigError):
        load_prompts("coco2017:0")
    (tmp_path / "x.pdf").write_text("x")
    with pytest.raises(QBenchError, match="unsupported type"):
        load_prompts(str(tmp_path / "x.pdf"))
