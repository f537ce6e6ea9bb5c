"""Text data: the sst2/csv/jsonl/hf-disk sources, synthetic-sentiment, tokenising and its cache."""

from __future__ import annotations

import itertools
import json
import zlib
from pathlib import Path

import pytest
import torch

from prunelab.data import (
    DATA_SOURCES,
    DATASETS,
    CsvSource,
    DatasetInfo,
    HfDiskSource,
    JsonlSource,
    Sst2Source,
    TextLoader,
    Texts,
    Tokenizer,
    dataset_status,
    load_dataset,
    resolve_dataset,
    texts_of,
    token_cache_file,
)
from prunelab.data.text import POSITIVE, sentiment_score
from prunelab.errors import DataError, SpecError


class CountingTokenizer:
    """Whitespace split, each word hashed into a vocabulary of ``size``; counts ``encode`` calls."""

    pad_id = 0

    def __init__(self, size: int = 1000, tag: str = "v1") -> None:
        self.size, self.tag, self.calls = size, tag, 0

    def ids(self, text: str, max_length: int) -> list[int]:
        ids = [1 + zlib.crc32(w.encode()) % (self.size - 1) for w in text.split()][:max_length]
        return ids + [self.pad_id] * (max_length - len(ids))

    def encode(self, texts: list[str], max_length: int) -> torch.Tensor:
        self.calls += 1
        return torch.tensor([self.ids(t, max_length) for t in texts], dtype=torch.int64).view(-1, max_length)

    def fingerprint(self) -> str:
        return f"fake-{self.size}-{self.tag}"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def read_now(name: str) -> Texts:
    """``texts_of`` on files as they are now (a resolved source keeps the fingerprint it read first)."""
    resolve_dataset.cache_clear()
    return texts_of(name)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    return write(path, "".join(json.dumps(r) + "\n" for r in rows))


QUOTED = 'the film \'s "best" moment , and a lone " quote'


def write_sst2(root: Path, n_train: int = 20) -> Path:
    train = ["sentence\tlabel"] + [f"sentence number {i} \t{i % 2}" for i in range(n_train - 1)]
    train.append(f"{QUOTED} \t1")
    write(root / "train.tsv", "\n".join(train) + "\n")
    write(root / "dev.tsv", "sentence\tlabel\n" + "".join(f"dev {i} \t{i % 2}\n" for i in range(6)))
    write(root / "test.tsv", "index\tsentence\n0\tno label here\n")  # ignored
    return root


# --- sst2 ------------------------------------------------------------------------------------------


def test_sst2(tmp_path):
    root = write_sst2(tmp_path / "SST-2")
    tok = CountingTokenizer()
    ds = load_dataset(f"sst2:{root}", tokenizer=tok)
    info = ds.info
    assert info.input_shape == (128,) and info.num_classes == 2 and (info.mean, info.std) == ((), ())
    assert info.default_val_size == 1 and not info.augment
    assert (len(ds.train), len(ds.val), len(ds.test)) == (19, 1, 6)
    for split in (ds.train, ds.val, ds.test):
        assert split.x.dtype == torch.int64 and split.x.shape[1:] == (128,)
    texts = texts_of(f"sst2:{root}")
    assert isinstance(texts, Texts) and texts.label_names == ("negative", "positive")
    assert texts.train_text[-1] == f"{QUOTED} " and texts.val_text is None  # quotes kept as written
    assert texts.test_text[0] == "dev 0 " and texts.test_labels.tolist() == [0, 1, 0, 1, 0, 1]
    assert torch.equal(ds.test.x, tok.encode(texts.test_text, 128))
    assert dataset_status(f"sst2:{root}") == (True, str(root.absolute()))
    assert DATA_SOURCES.get("sst2") is Sst2Source and Sst2Source.usage == "sst2:DIR"


def test_sst2_errors(tmp_path):
    assert not dataset_status(f"sst2:{tmp_path / 'nope'}")[0]
    with pytest.raises(DataError, match=r"no such folder: .*nope"):
        read_now(f"sst2:{tmp_path / 'nope'}")
    root = write_sst2(tmp_path / "a")
    (root / "dev.tsv").unlink()
    found, why = dataset_status(f"sst2:{root}")
    assert not found and "dev.tsv" in why
    with pytest.raises(DataError, match=r"has no dev\.tsv"):
        read_now(f"sst2:{root}")
    root = write_sst2(tmp_path / "b")
    write(root / "dev.tsv", "text\tscore\nfine\t1\n")
    with pytest.raises(DataError, match=r"dev\.tsv has no text column.*'text', 'score'"):
        read_now(f"sst2:{root}")
    write(root / "dev.tsv", "sentence\tlabel\nfine\t2\n")
    with pytest.raises(DataError, match=r"dev\.tsv, line 2: bad label 2; expected integer labels 0\.\.1"):
        read_now(f"sst2:{root}")
    write(root / "dev.tsv", "sentence\tlabel\nfine\t1\textra\n")
    with pytest.raises(DataError, match=r"dev\.tsv, line 2 has 3 fields but the header has 2"):
        read_now(f"sst2:{root}")
    write(root / "dev.tsv", "sentence\tlabel\nfine\t\n")
    with pytest.raises(DataError, match=r"dev\.tsv, line 2 has no label"):
        read_now(f"sst2:{root}")
    (root / "dev.tsv").write_bytes(b"sentence\tlabel\n\xff\xfe\t1\n")
    with pytest.raises(DataError, match=r"dev\.tsv is not UTF-8"):
        read_now(f"sst2:{root}")
    with pytest.raises(SpecError, match=r"needs a path.*sst2:DIR"):
        resolve_dataset("sst2:")


# --- csv and jsonl ---------------------------------------------------------------------------------


def test_csv_folder_with_val(tmp_path):
    root = tmp_path / "reviews"
    write(root / "train.csv", 'text,label\n"great, really",1\nawful,0\n"",1\nfine,0\n')
    write(root / "test.csv", "label,text\n0,bad\n1,good\n")
    write(root / "val.csv", "text,label\nok,1\n")
    name = f"csv:{root}"
    ds = load_dataset(name, tokenizer=CountingTokenizer())
    assert (len(ds.train), len(ds.val), len(ds.test)) == (4, 1, 2)
    assert ds.info.default_val_size == 1 and ds.info.num_classes == 2
    texts = texts_of(name)
    assert texts.train_text == ["great, really", "awful", "", "fine"]  # quoted comma; empty text allowed
    assert texts.test_text == ["bad", "good"] and texts.val_text == ["ok"]
    assert texts.label_names == ("0", "1") and texts.test_labels.tolist() == [0, 1]
    assert ds.val.y.tolist() == [1] and ds.train.y.tolist() == [1, 0, 1, 0]
    with pytest.raises(DataError, match=r"own validation data .*1 examples.*val_size=2 cannot apply"):
        load_dataset(name, val_size=2, tokenizer=CountingTokenizer())


def test_csv_single_file_string_labels_and_options(tmp_path):
    file = write(
        tmp_path / "all.csv",
        "review,stars,split\nloved it,pos,train\nhated it,neg,train\nmeh,neutral,TRAIN\n"
        "so good,pos,test\nno,neg,Validation\n",
    )
    name = f"csv:{file}#text=review,label=stars"
    texts = texts_of(name)
    assert texts.label_names == ("neg", "neutral", "pos")
    assert texts.train_text == ["loved it", "hated it", "meh"] and texts.train_labels.tolist() == [2, 0, 1]
    assert texts.test_labels.tolist() == [2] and texts.val_text == ["no"] and texts.val_labels.tolist() == [0]
    assert resolve_dataset(name).info.num_classes == 3
    with pytest.raises(
        DataError, match=r"all\.csv has no label column \(looked for label, labels, target\).*'review'"
    ):
        texts_of(f"csv:{file}")
    with pytest.raises(DataError, match=r"all\.csv has no label column 'score'; its columns are 'review'"):
        texts_of(f"csv:{file}#text=review,label=score")
    with pytest.raises(SpecError, match=r"bad option 'colour=red'"):
        resolve_dataset(f"csv:{file}#colour=red")
    with pytest.raises(SpecError, match=r"option 'text' given twice"):
        resolve_dataset(f"csv:{file}#text=a,text=b")
    odd = write(tmp_path / "odd#1.csv", "text,label,split\na,0,train\nb,1,test\n")
    assert texts_of(f"csv:{odd}").test_text == ["b"]  # a '#' without '=' after it is part of the path


HEADER = "text,label,split\n"


def test_csv_label_errors(tmp_path):
    def load(body: str, name: str) -> Texts:
        return read_now(f"csv:{write(tmp_path / name, HEADER + body)}")

    with pytest.raises(DataError, match=r"stars\.csv range over 1\.\.5 and 0 never occurs.*subtract 1"):
        load("a,1,train\nb,5,train\nc,3,test\nd,2,test\ne,4,test\n", "stars.csv")
    with pytest.raises(DataError, match=r"neg\.csv, line 3: bad label -1"):
        load("a,0,train\nb,-1,train\nc,1,test\n", "neg.csv")
    with pytest.raises(DataError, match=r"missing\.csv, line 3 has no label"):
        load("a,0,train\nb,,train\nc,1,test\n", "missing.csv")
    with pytest.raises(DataError, match=r"split\.csv, line 3: split 'dev' is not one of train, test"):
        load("a,0,train\nb,1,dev\n", "split.csv")
    with pytest.raises(DataError, match=r"notest\.csv has no rows whose 'split' is test"):
        load("a,0,train\n", "notest.csv")
    with pytest.raises(DataError, match=r"short\.csv, line 2 has 2 fields but the header has 3"):
        load("a,0\n", "short.csv")
    with pytest.raises(DataError, match=r"nosplit\.csv has no split column.*'text', 'label'"):
        read_now(f"csv:{write(tmp_path / 'nosplit.csv', 'text,label' + chr(10) + 'a,0')}")
    with pytest.raises(DataError, match=r"empty\.csv is empty"):
        read_now(f"csv:{write(tmp_path / 'empty.csv', '')}")
    folder = tmp_path / "folder"
    write(folder / "train.csv", "text,label\na,0\n")
    assert not dataset_status(f"csv:{folder}")[0]
    with pytest.raises(DataError, match=r"folder has no test\.csv; csv:PATH needs a folder holding"):
        read_now(f"csv:{folder}")
    write(folder / "test.csv", "text,label\n")
    with pytest.raises(DataError, match=r"test\.csv holds no test examples"):
        read_now(f"csv:{folder}")
    with pytest.raises(DataError, match=r"no such file or folder: .*nothing"):
        read_now(f"csv:{tmp_path / 'nothing'}")


def test_jsonl_folder_and_single_file(tmp_path):
    root = tmp_path / "j"
    write_jsonl(root / "train.jsonl", [{"sentence": "yes", "target": 1}, {"sentence": "no", "target": 0}])
    write_jsonl(root / "test.jsonl", [{"sentence": "maybe", "target": 1, "extra": [1]}])
    ds = load_dataset(f"jsonl:{root}", tokenizer=CountingTokenizer())
    assert (len(ds.train), len(ds.val), len(ds.test)) == (1, 1, 1) and ds.info.num_classes == 2
    assert DATA_SOURCES.get("jsonl") is JsonlSource and DATA_SOURCES.get("csv") is CsvSource
    rows = [
        {"content": "a", "label": True, "split": "train"},
        {"content": "b", "label": False, "split": "train"},
        {"content": "c", "label": True, "split": "test"},
    ]
    texts = read_now(f"jsonl:{write_jsonl(tmp_path / 'one.jsonl', rows)}")
    assert texts.label_names == ("false", "true") and texts.train_labels.tolist() == [1, 0]
    bad = write(tmp_path / "bad.jsonl", '{"text": "a", "label": 0, "split": "train"}\n[1, 2]\n')
    with pytest.raises(DataError, match=r"bad\.jsonl, line 2 holds list, not a JSON object"):
        read_now(f"jsonl:{bad}")
    write(bad, '{"text": "a", "label": 0, "split": "train"}\n{"text": \n')
    with pytest.raises(DataError, match=r"bad\.jsonl, line 2 is not valid JSON"):
        read_now(f"jsonl:{bad}")
    write_jsonl(
        bad, [{"text": "a", "label": None, "split": "train"}, {"text": "b", "label": 0, "split": "test"}]
    )
    with pytest.raises(DataError, match=r"bad\.jsonl, line 1 has no label"):
        read_now(f"jsonl:{bad}")
    write_jsonl(bad, [{"text": 5, "label": 0, "split": "train"}, {"text": "b", "label": 0, "split": "test"}])
    with pytest.raises(DataError, match=r"bad\.jsonl, line 1: the text is int 5, not a string"):
        read_now(f"jsonl:{bad}")


def test_fingerprint_follows_content_and_options(tmp_path):
    file = write(tmp_path / "d.csv", "text,other,label,split\na,x,0,train\nb,y,1,test\n")
    first = CsvSource(str(file))
    fp = first.fingerprint()
    assert len(fp) == 16 and CsvSource(str(file)).fingerprint() == fp
    assert CsvSource(f"{file}#text=other").fingerprint() != fp
    assert texts_of(f"csv:{file}#text=other").train_text == ["x"]
    write(file, "text,other,label,split\na,x,1,train\nb,y,0,test\n")
    assert CsvSource(str(file)).fingerprint() != fp
    with pytest.raises(DataError, match=r"changed while this process was running"):
        first.load_texts(None)


# --- hf-disk ---------------------------------------------------------------------------------------


def test_hf_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.disable_progress_bars()
    features = datasets.Features(
        {"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
    )

    def split(texts, labels):
        return datasets.Dataset.from_dict({"sentence": texts, "label": labels}, features=features)

    glue = datasets.DatasetDict(
        train=split(["a", "b", "c", "d"], [0, 1, 0, 1]),
        validation=split(["e", "f"], [1, 0]),
        test=split(["g", "h", "i"], [-1, -1, -1]),
    )
    glue.save_to_disk(str(tmp_path / "glue"))
    texts = texts_of(f"hf-disk:{tmp_path / 'glue'}")
    assert texts.test_text == ["e", "f"] and texts.test_labels.tolist() == [1, 0] and texts.val_text is None
    assert texts.label_names == ("neg", "pos")
    ds = load_dataset(f"hf-disk:{tmp_path / 'glue'}", tokenizer=CountingTokenizer())
    assert (len(ds.train), len(ds.val), len(ds.test)) == (3, 1, 2)
    assert DATA_SOURCES.get("hf-disk") is HfDiskSource

    plain = datasets.DatasetDict(
        train=datasets.Dataset.from_dict({"review": ["x", "y"], "stars": ["good", "bad"]}),
        validation=datasets.Dataset.from_dict({"review": ["z"], "stars": ["good"]}),
        test=datasets.Dataset.from_dict({"review": ["w"], "stars": ["bad"]}),
    )
    plain.save_to_disk(str(tmp_path / "plain"))
    texts = texts_of(f"hf-disk:{tmp_path / 'plain'}#text=review,label=stars")
    assert texts.test_text == ["w"] and texts.val_text == ["z"] and texts.label_names == ("bad", "good")
    with pytest.raises(DataError, match=r"plain \(split train\) has no label column.*'review', 'stars'"):
        texts_of(f"hf-disk:{tmp_path / 'plain'}")

    split(["a"], [0]).save_to_disk(str(tmp_path / "single"))
    with pytest.raises(DataError, match=r"single is not a DatasetDict saved with save_to_disk"):
        texts_of(f"hf-disk:{tmp_path / 'single'}")
    (tmp_path / "folder").mkdir()
    assert not dataset_status(f"hf-disk:{tmp_path / 'folder'}")[0]
    with pytest.raises(DataError, match=r"folder is not a DatasetDict"):
        texts_of(f"hf-disk:{tmp_path / 'folder'}")
    write(tmp_path / "fake" / "dataset_dict.json", "not json")
    with pytest.raises(DataError, match=r"fake cannot be read as a saved dataset"):
        texts_of(f"hf-disk:{tmp_path / 'fake'}")
    datasets.DatasetDict(train=split(["a"], [0]), test=split(["b"], [-1])).save_to_disk(str(tmp_path / "u"))
    with pytest.raises(DataError, match=r"test split is unlabelled .* no validation split"):
        texts_of(f"hf-disk:{tmp_path / 'u'}")


def test_hf_disk_without_the_nlp_extra(tmp_path, monkeypatch):
    import sys

    write(tmp_path / "d" / "dataset_dict.json", '{"splits": ["train", "test"]}')
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets raises ImportError
    with pytest.raises(SpecError, match=r"needs the nlp extra: pip install 'prunelab\[nlp\]'"):
        texts_of(f"hf-disk:{tmp_path / 'd'}")


# --- synthetic-sentiment ---------------------------------------------------------------------------


def test_synthetic_sentiment():
    from prunelab.data import text as text_module

    loader = DATASETS.get("synthetic-sentiment")
    assert loader.is_text and not loader.needs_files and loader.max_length == 32
    assert "SYNTHETIC" in loader.info.description and loader.info.input_shape == (32,)
    assert loader.status(None) == (True, "generated in memory") and loader.fingerprint()
    texts = texts_of("synthetic-sentiment")
    fresh = text_module._sentiment_texts.__wrapped__()
    assert fresh.train_text == texts.train_text and torch.equal(fresh.test_labels, texts.test_labels)
    assert (len(texts.train_text), len(texts.test_text)) == (2000, 500)
    assert texts.train_labels.bincount().tolist() == [1000, 1000]
    assert texts.test_labels.bincount().tolist() == [250, 250]
    for sentence, label in zip(texts.train_text, texts.train_labels.tolist(), strict=True):
        words = sentence.split()
        assert 4 <= len(words) <= 12
        assert sentiment_score(words) != 0 and (sentiment_score(words) > 0) == bool(label)
    assert sentiment_score(["not", "good"]) == -1 and sentiment_score([POSITIVE[0], "bad", "great"]) == 1
    assert any("not" in s.split() for s in texts.train_text)
    ds = load_dataset("synthetic-sentiment", tokenizer=CountingTokenizer())
    assert (len(ds.train), len(ds.val), len(ds.test)) == (1800, 200, 500)


def test_synthetic_sentiment_is_learnable():
    """Logistic regression on word and word-pair counts: well above the 75% of words alone."""
    texts = texts_of("synthetic-sentiment")
    vocab: dict[str, int] = {}

    def grams(sentence: str) -> list[str]:
        words = sentence.split()
        return words + [f"{a} {b}" for a, b in itertools.pairwise(words)]

    for sentence in texts.train_text:
        for gram in grams(sentence):
            vocab.setdefault(gram, len(vocab))

    def features(sentences: list[str]) -> torch.Tensor:
        x = torch.zeros(len(sentences), len(vocab))
        for i, sentence in enumerate(sentences):
            for gram in grams(sentence):
                if gram in vocab:
                    x[i, vocab[gram]] += 1
        return x

    x_train, x_test = features(texts.train_text), features(texts.test_text)
    torch.manual_seed(0)
    model = torch.nn.Linear(len(vocab), 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(100):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x_train), texts.train_labels).backward()
        opt.step()
    accuracy = (model(x_test).argmax(1) == texts.test_labels).float().mean()
    assert accuracy > 0.88


# --- tokenising and the token cache ----------------------------------------------------------------


def test_token_cache_reused_and_repaired(tmp_path):
    root = write_sst2(tmp_path / "SST-2")
    name = f"sst2:{root}"
    tok = CountingTokenizer()
    assert isinstance(tok, Tokenizer)
    first = load_dataset(name, tokenizer=tok)
    assert tok.calls == 2  # train and test (the validation set is held out of train)
    loader = resolve_dataset(name)
    path = token_cache_file(loader, tok)
    assert path.is_file() and path.name == f"{loader.fingerprint()}-fake-1000-v1-128.safetensors"
    assert path.parent.name == "tokens"
    second = CountingTokenizer()  # same fingerprint: from the cache
    again = load_dataset(name, tokenizer=second)
    assert (
        second.calls == 0
        and torch.equal(again.train.x, first.train.x)
        and torch.equal(again.val.y, first.val.y)
    )
    path.write_bytes(b"damaged")
    third = CountingTokenizer()
    repaired = load_dataset(name, tokenizer=third)
    assert third.calls == 2 and torch.equal(repaired.test.x, first.test.x)
    other = CountingTokenizer(size=50)
    load_dataset(name, tokenizer=other)
    assert other.calls == 2 and token_cache_file(loader, other) != path
    assert len(list(path.parent.iterdir())) == 2


def test_val_split_cached_and_indexed(tmp_path):
    root = tmp_path / "c"
    write(root / "train.csv", "text,label\na b,0\nc,1\n")
    write(root / "test.csv", "text,label\nd,0\n")
    write(root / "val.csv", "text,label\ne f g,1\nh,0\n")
    tok = CountingTokenizer()
    ds = load_dataset(f"csv:{root}", tokenizer=tok)
    assert tok.calls == 3
    assert torch.equal(ds.val.x, tok.encode(["e f g", "h"], 128)) and ds.val.y.tolist() == [1, 0]
    assert torch.equal(ds.train.x, tok.encode(["a b", "c"], 128))
    assert ds.train.x[0, 2:].eq(0).all()  # right-padded with pad_id


def test_load_dataset_text_errors(tmp_path):
    with pytest.raises(
        SpecError, match=r"synthetic-sentiment is text data: loading it needs the model's tokenizer"
    ):
        load_dataset("synthetic-sentiment")
    with pytest.raises(SpecError, match=r"stats .* do not apply"):
        load_dataset("synthetic-sentiment", stats=((0.5,), (0.5,)), tokenizer=CountingTokenizer())
    with pytest.raises(DataError, match=r"needs a model's tokenizer.*tokenizer=\.\.\."):
        DATASETS.get("synthetic-sentiment").load_raw(None)
    with pytest.raises(SpecError, match=r"synthetic is not text data"):
        load_dataset("synthetic", tokenizer=CountingTokenizer())
    with pytest.raises(
        SpecError, match=r"synthetic is not a text dataset; text datasets are synthetic-sentiment"
    ):
        texts_of("synthetic")
    with pytest.raises(SpecError, match=r"tokenizer for synthetic-sentiment must have pad_id"):
        load_dataset("synthetic-sentiment", tokenizer=object())

    class Short(CountingTokenizer):
        def encode(self, texts, max_length):
            return super().encode(texts, max_length)[:, :4]

    with pytest.raises(
        DataError, match=r"encoded the 2000 train texts of synthetic-sentiment as \(2000, 4\)"
    ):
        load_dataset("synthetic-sentiment", tokenizer=Short(tag="short"))


def test_text_loader_subclass_is_cached():
    class Tiny(TextLoader):
        info = DatasetInfo("tiny", (8,), 2, (), (), False, 0, "two texts", "in memory")
        calls = 0

        def locate(self, data_dir):
            return None

        def status(self, data_dir):
            return True, "in memory"

        def load_texts(self, data_dir):
            type(self).calls += 1
            labels = torch.tensor([0, 1])
            return Texts(["a", "b"], labels, ["c", "d"], labels, None, None, ("x", "y"), "memory")

    tiny = Tiny()
    assert tiny.load_texts(None) is tiny.load_texts(None) and Tiny.calls == 1
