"""Datasets held as normalised tensors, a fixed validation split, and fast mini-batches.

Importing this package registers every dataset in :data:`DATASETS` and every data source
(``imagefolder:PATH``, ``npz:PATH``, the text ones ``sst2:DIR``, ``csv:PATH``, ``jsonl:PATH``,
``hf-disk:DIR``, and ``text:PATH``, running text for language models) in :data:`DATA_SOURCES`; :func:`resolve_dataset` accepts both. Text datasets
(:mod:`prunelab.data.text`) load with a tokenizer: ``load_dataset(name, tokenizer=...)``.
"""

# Importing the loader modules registers their datasets, in this order (the order of `data list`).
from prunelab.data import mnist  # noqa: F401

# isort: split
from prunelab.data import cifar, digits, synthetic  # noqa: F401
from prunelab.data.augment import cifar_augment
from prunelab.data.base import (
    DATA_SOURCES,
    DATASETS,
    Dataset,
    DatasetInfo,
    DatasetLoader,
    RawData,
    Split,
    dataset_status,
    load_dataset,
    register_loader,
    register_source,
    resolve_dataset,
    split_indices,
)
from prunelab.data.download import download
from prunelab.data.files import ImageFolderSource, NpzSource, SourceLoader
from prunelab.data.idx import read_idx, write_idx
from prunelab.data.loader import TensorLoader
from prunelab.data.locate import cache_dir, cache_root, candidate_dirs, find_data, ways_to_get
from prunelab.data.text import (
    CsvSource,
    HfDiskSource,
    JsonlSource,
    Sst2Source,
    SyntheticSentiment,
    TextLoader,
    Texts,
    TextSource,
    Tokenizer,
    texts_of,
    token_cache_file,
    tokenise,
)

# isort: split
from prunelab.data.corpus import Corpus, TextCorpus, load_lm_dataset  # text:PATH, after the text sources

__all__ = [
    "DATASETS",
    "DATA_SOURCES",
    "Corpus",
    "CsvSource",
    "Dataset",
    "DatasetInfo",
    "DatasetLoader",
    "HfDiskSource",
    "ImageFolderSource",
    "JsonlSource",
    "NpzSource",
    "RawData",
    "SourceLoader",
    "Split",
    "Sst2Source",
    "SyntheticSentiment",
    "TensorLoader",
    "TextCorpus",
    "TextLoader",
    "TextSource",
    "Texts",
    "Tokenizer",
    "cache_dir",
    "cache_root",
    "candidate_dirs",
    "cifar_augment",
    "dataset_status",
    "download",
    "find_data",
    "load_dataset",
    "load_lm_dataset",
    "read_idx",
    "register_loader",
    "register_source",
    "resolve_dataset",
    "split_indices",
    "texts_of",
    "token_cache_file",
    "tokenise",
    "ways_to_get",
    "write_idx",
]
