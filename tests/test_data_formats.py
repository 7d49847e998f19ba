"""Tests for nemocompress.data.load_texts on parquet files and saved Hugging Face ``datasets`` folders.

Fast and offline: every file is built in ``tmp_path``. Skipped when the optional ``pyarrow`` /
``datasets`` packages (``pip install "nemocompress[data]"``) are missing.
"""

import json
import sys

import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
datasets = pytest.importorskip("datasets")

from nemocompress.data import DataError, calibration_samples, load_texts  # noqa: E402
from nemocompress.zoo import zoo_tokenizer  # noqa: E402

CHAT_TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
MESSAGES = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


@pytest.fixture(scope="module")
def tokenizer():
    tok = zoo_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    return tok


def write_parquet(path, columns, schema=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns, schema=schema), path)
    return path


def save_dataset(path, rows):
    datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return path


# ---------------------------------------------------------------- parquet


def test_parquet_text_column_drops_empty_and_null_rows(tmp_path):
    path = write_parquet(tmp_path / "a.parquet", {"id": [0, 1, 2, 3], "text": ["one", "", None, "two"]})
    assert load_texts(path) == ["one", "two"]


def test_parquet_custom_text_field_and_large_string(tmp_path):
    schema = pa.schema([("body", pa.large_string())])
    path = write_parquet(tmp_path / "a.parquet", {"body": ["custom"]}, schema=schema)
    assert load_texts(path, text_field="body") == ["custom"]


def test_parquet_messages_use_chat_template(tmp_path, tokenizer):
    path = write_parquet(tmp_path / "chat.parquet", {"messages": [MESSAGES, MESSAGES[:1]]})
    assert load_texts(path, tokenizer=tokenizer) == ["user: hi\nassistant: hello\n", "user: hi\n"]
    with pytest.raises(DataError, match="tokenizer="):
        load_texts(path)


def test_parquet_wrong_column_lists_columns(tmp_path):
    path = write_parquet(tmp_path / "a.parquet", {"content": ["x"], "id": [1]})
    with pytest.raises(DataError, match=r"columns are \['content', 'id'\].*text_field="):
        load_texts(path)


def test_parquet_non_string_column(tmp_path):
    path = write_parquet(tmp_path / "a.parquet", {"text": [1, 2]})
    with pytest.raises(DataError, match="expected strings"):
        load_texts(path)


def test_parquet_empty_is_an_error(tmp_path):
    path = write_parquet(tmp_path / "empty.parquet", {"text": pa.array([], type=pa.string())})
    with pytest.raises(DataError, match="holds no text"):
        load_texts(path)
    blank = write_parquet(tmp_path / "blank.parquet", {"text": ["", "  \n"]})
    with pytest.raises(DataError, match="every document is empty"):
        load_texts(blank)


def test_parquet_unreadable(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"not a parquet file at all")
    with pytest.raises(DataError, match="cannot read .* as parquet"):
        load_texts(path)


def test_calibration_samples_from_parquet(tmp_path, tokenizer):
    path = write_parquet(tmp_path / "a.parquet", {"text": [f"document number {i}\n" for i in range(20)]})
    samples, heldout = calibration_samples(tokenizer, path, num_samples=4, seq_len=16)
    assert samples.shape == (4, 16)
    assert len(heldout) == 2


# ---------------------------------------------------------------- saved datasets folders


def test_saved_dataset_folder(tmp_path):
    path = save_dataset(
        tmp_path / "ds", [{"text": "alpha", "n": 1}, {"text": "", "n": 2}, {"text": "beta", "n": 3}]
    )
    assert load_texts(path) == ["alpha", "beta"]


def test_saved_dataset_messages(tmp_path, tokenizer):
    path = save_dataset(tmp_path / "ds", [{"messages": MESSAGES}])
    assert load_texts(path, tokenizer=tokenizer) == ["user: hi\nassistant: hello\n"]


def test_saved_dataset_wrong_column_lists_columns(tmp_path):
    path = save_dataset(tmp_path / "ds", [{"content": "x", "label": 0}])
    with pytest.raises(DataError, match=r"columns are \['content', 'label'\]"):
        load_texts(path)


def test_saved_dataset_dict_uses_train_split(tmp_path):
    path = tmp_path / "dd"
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list([{"text": "train one"}, {"text": "train two"}]),
            "test": datasets.Dataset.from_list([{"text": "test one"}]),
        }
    ).save_to_disk(str(path))
    assert load_texts(path) == ["train one", "train two"]
    assert load_texts(path / "test") == ["test one"]  # a split's folder is a saved Dataset


def test_saved_dataset_dict_without_train_lists_splits(tmp_path):
    path = tmp_path / "dd"
    datasets.DatasetDict(
        {
            "validation": datasets.Dataset.from_list([{"text": "v"}]),
            "test": datasets.Dataset.from_list([{"text": "t"}]),
        }
    ).save_to_disk(str(path))
    with pytest.raises(DataError, match=r"splits \['test', 'validation'\] but no 'train' split"):
        load_texts(path)


def test_broken_saved_dataset_folder(tmp_path):
    path = save_dataset(tmp_path / "ds", [{"text": "alpha"}])
    (path / "state.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(DataError, match="cannot read the saved datasets folder"):
        load_texts(path)


# ---------------------------------------------------------------- mixed folders, optional packages


def test_folder_mixes_text_jsonl_parquet_and_saved_datasets(tmp_path):
    (tmp_path / "b.txt").write_text("bee", encoding="utf-8")
    (tmp_path / "c.jsonl").write_text(json.dumps({"text": "jsonl row"}) + "\n", encoding="utf-8")
    write_parquet(tmp_path / "a" / "rows.parquet", {"text": ["parquet row"]})
    write_parquet(tmp_path / ".hidden" / "skip.parquet", {"text": ["hidden"]})
    save_dataset(tmp_path / "d", [{"text": "dataset row"}])
    datasets.DatasetDict({"train": datasets.Dataset.from_list([{"text": "dict row"}])}).save_to_disk(
        str(tmp_path / "e")
    )
    assert load_texts(tmp_path) == ["parquet row", "bee", "jsonl row", "dataset row", "dict row"]


def test_folder_reports_the_bad_parquet_file(tmp_path):
    (tmp_path / "a.txt").write_text("fine", encoding="utf-8")
    bad = write_parquet(tmp_path / "b.parquet", {"body": ["x"]})
    with pytest.raises(DataError, match=f"{bad}.*columns are"):
        load_texts(tmp_path)


def test_missing_optional_packages_name_the_extra(tmp_path, monkeypatch):
    parquet = write_parquet(tmp_path / "a.parquet", {"text": ["x"]})
    saved = save_dataset(tmp_path / "ds", [{"text": "x"}])
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(DataError, match=r"'pyarrow' package: pip install \"nemocompress\[data\]\""):
        load_texts(parquet)
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(DataError, match=r"'datasets' package: pip install \"nemocompress\[data\]\""):
        load_texts(saved)
