"""Transformers (issue 13, first part): hf: and bert-tiny models on text data, pruned unstructured
through the runner and the CLI, with their bad-input errors."""

import re

import pytest
import torch
from helpers import run_example

from prunelab.errors import SpecError
from prunelab.experiments import ExperimentRunner, ExperimentSpec, PruneSpec, TreatmentSpec, load_level
from prunelab.models import build_model, resolve_model
from prunelab.models.hf import TextClassifier
from prunelab.spec import build_spec
from prunelab.training import TrainConfig

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")

DATA = "synthetic-sentiment"


def tiny_text(**overrides) -> ExperimentSpec:
    values = dict(
        model="bert-tiny",
        data=DATA,
        train=TrainConfig(optimizer="adam", lr=2e-3, batch_size=32, iterations=150, eval_every="50it"),
        pruning=PruneSpec(
            method="magnitude", scope="global", rate=0.5, rounds=2, exclude=("model.classifier",)
        ),
        treatment=TreatmentSpec(kind="finetune", finetune_epochs=1),
    )
    return ExperimentSpec(**(values | overrides))


def test_bert_tiny_learns_the_synthetic_task_and_its_masks_hold_through_finetuning(tmp_path):
    spec = tiny_text()
    result = ExperimentRunner(spec, tmp_path / "runs").run()
    accuracies = [m.early_stop.test_acc for m in result.levels[0]]
    assert accuracies[0] > 0.75, accuracies  # a real transformer learning a real rule, not chance (0.5)
    level = load_level(spec.experiment_id(), root=tmp_path / "runs")
    assert abs(level.mask.density() - 0.25) < 0.01
    for name, keep in level.mask.items():
        weight = dict(level.model.named_parameters())[name]
        assert bool((weight.detach()[~keep] == 0).all()), name  # pruned weights stayed exactly zero
    layers = [n for n in level.mask.names() if ".encoder.layer." in n]
    assert any("attention.self.query" in n for n in layers) and any("intermediate.dense" in n for n in layers)


def test_the_tokenizer_is_trained_once_and_the_model_fits_it():
    source = resolve_model("bert-tiny")
    tok = source.tokenizer(DATA)
    ids = tok.encode(["not good at all", "great"], 12)
    assert ids.shape == (2, 12) and ids.dtype == torch.int64
    assert int(ids[1, 3]) == tok.pad_id  # [CLS] great [SEP] then padding
    net = build_model("bert-tiny", num_classes=2, input_shape=(32,), seed=0, data=DATA)
    assert net.model.config.vocab_size == tok.vocab_size
    assert net(ids).shape == (2, 2)
    assert tok.fingerprint() == source.tokenizer(DATA).fingerprint()


def test_padding_is_cut_per_batch_without_changing_the_logits():
    net = build_model("bert-tiny", num_classes=2, input_shape=(32,), seed=0, data=DATA).eval()
    tok = resolve_model("bert-tiny").tokenizer(DATA)
    short, long = tok.encode(["good"], 8), tok.encode(["good"], 32)
    with torch.no_grad():
        torch.testing.assert_close(net(short), net(long))


def save_bert(folder, num_labels: int):
    """A 1-layer BERT (hidden 32, 2 heads) with bert-tiny's tokenizer, saved to ``folder`` as
    save_pretrained writes it; returns the model."""
    tok = resolve_model("bert-tiny").tokenizer(DATA)
    config = transformers.BertConfig(
        vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, num_labels=num_labels,
    )  # fmt: skip
    saved = transformers.BertForSequenceClassification(config)
    saved.save_pretrained(folder)
    tok.tokenizer.save_pretrained(folder)
    return saved


def test_an_hf_folder_loads_with_its_weights(tmp_path):
    folder = tmp_path / "my-bert"
    saved = save_bert(folder, 3)
    notes = []
    spec = ExperimentSpec(model=f"hf:{folder}", weights="hf:DEFAULT", data=DATA)
    net = spec.build_model(0, notes=notes)
    encoder = "bert.encoder.layer.0.attention.self.query.weight"
    torch.testing.assert_close(net.model.state_dict()[encoder], saved.state_dict()[encoder])
    assert net.model.classifier.out_features == 2  # the data's 2 classes, not the folder's 3
    assert any("classifier head is new" in n for n in notes)
    ExperimentRunner(
        spec.model_copy(update={"train": TrainConfig(iterations=2, batch_size=16, eval_every="2it")}),
        tmp_path / "runs",
    ).run()


def test_hf_errors_name_what_is_wrong(tmp_path):
    with pytest.raises(SpecError, match=r"no model configuration found.*save_pretrained"):
        build_model(f"hf:{tmp_path / 'absent'}", num_classes=2, input_shape=(16,), data=DATA)
    neo = tmp_path / "neo"
    transformers.GPTNeoConfig(
        num_layers=1, hidden_size=16, num_heads=2, attention_types=[[["global"], 1]]
    ).save_pretrained(neo)
    with pytest.raises(
        SpecError, match="is a 'gpt_neo' model; prunelab supports the encoder layouts of bert"
    ):
        build_model(f"hf:{neo}", num_classes=2, input_shape=(16,), data=DATA)
    with pytest.raises(SpecError, match="reads images"):
        ExperimentSpec(model="lenet5", data=DATA).load_data()
    with pytest.raises(SpecError, match="reads token ids"):
        build_model("bert-tiny", num_classes=2, input_shape=(1, 28, 28), data=DATA)
    with pytest.raises(SpecError, match="only a hf:NAME model takes"):
        build_spec(ExperimentSpec, model="bert-tiny", data=DATA, weights="hf:DEFAULT")


def test_a_text_experiment_through_the_cli(cli, tmp_path):
    root = tmp_path / "runs"
    code, out, err = cli(
        "run", "--model", "bert-tiny", "--data", DATA, "--iterations", "20", "--batch-size", "32",
        "--eval-every", "10it", "--rounds", "2", "--rate", "0.3", "--treatment", "finetune",
        "--controls", "random-mask", "--root", root, "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    (run,) = [p.name for p in (root / "experiments").iterdir()]
    code, out, err = cli("show", run, "--root", root)
    assert code == 0 and "49.00%" in out, err
    code, out, err = cli("report", run, "--root", root, "-o", tmp_path / "report")
    assert code == 0, err
    page = (tmp_path / "report" / "report.html").read_text()
    assert "Attention heads" in page and "Head importance" in page
    code, out, err = cli("heads", run, "--root", root, "--batches", 2, "--plot", tmp_path / "heads.png")
    assert code == 0, err
    assert "Head importance" in out and "head 1" in out
    assert (tmp_path / "heads.png").stat().st_size > 1000
    code, out, err = cli("export", run, "--root", root, "-o", tmp_path / "compact")  # no whole unit pruned:
    assert code == 0 and "hf/: a save_pretrained folder (FFN width 512)" in " ".join(out.split()), err
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "compact" / "hf").eval()
    level = load_level(run, root=root)
    x = level.spec.load_data().test.x[:8]
    with torch.no_grad():
        torch.testing.assert_close(TextClassifier(hf, level.model.pad_id)(x), level.model.eval()(x))


def test_the_bert_example_runs_and_says_its_data_is_synthetic(tmp_path):
    out = run_example(
        "bert_sst2.py", "--root", tmp_path / "runs", "--iterations", 4, "--tokens", 16, "--repeats", 1
    )
    assert "SYNTHETIC sentiment task" in out and "50% x 2 rounds       2    25.0%" in out
    structured = next(line for line in out.splitlines() if line.startswith("heads+FFN 50%") and "->" in line)
    assert structured.split()[2:4] == ["2", "512"]  # of 4 heads and 1,024 FFN neurons


def test_the_listings_know_text(cli):
    code, out, err = cli("models", "--data", DATA)
    assert code == 0, err
    text = " ".join(out.split())
    assert "hf:PATH_OR_NAME" in text and "bert-tiny" in text  # the zoo reads images: no counts for text
    code, out, err = cli("data", "list")
    assert code == 0 and "synthetic-sentiment" in out and "sst2:DIR" in out and "hf-disk:DIR" in out
    code, out, err = cli("train", "--model", "lenet5", "--data", DATA, "--iterations", "1")
    assert code == 2 and "reads images" in " ".join(err.split())


def test_head_importance_is_the_gate_gradient_checked_by_finite_differences():
    from prunelab.analysis.heads import attention_layers, gated_loss, head_importance

    spec = ExperimentSpec(model="bert-tiny", data=DATA)
    net = spec.build_model(0).double().eval()
    data = spec.load_data()
    batch = (data.val.x[:16], data.val.y[:16])
    raw = head_importance(net, [batch], normalise=False)
    layers = attention_layers(net)
    assert raw.shape == (len(layers), layers[0].heads) == (2, 2)
    eps = 1e-4
    for i in range(raw.shape[0]):
        for h in range(raw.shape[1]):
            up, down = torch.ones(raw.shape, dtype=torch.float64), torch.ones(raw.shape, dtype=torch.float64)
            up[i, h] += eps
            down[i, h] -= eps
            with torch.no_grad():
                (a,), (b,) = gated_loss(net, [batch], up), gated_loss(net, [batch], down)
            assert abs(float(raw[i, h]) - abs(float(a - b) / (2 * eps))) <= 1e-4 * max(1.0, float(raw[i, h]))
    normalised = head_importance(net, [batch, batch])
    torch.testing.assert_close(normalised.norm(dim=1), torch.ones(2), rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # gates at 1 change nothing
        (plain,) = [torch.nn.functional.cross_entropy(net(batch[0]), batch[1])]
        (gated,) = gated_loss(net, [batch], torch.ones(2, 2, dtype=torch.float64))
    torch.testing.assert_close(plain, gated)
    with pytest.raises(SpecError, match="needs a transformer encoder"):
        head_importance(build_model("lenet5"), [batch])


@pytest.fixture
def hf_folder(tmp_path):
    save_bert(tmp_path / "bert", 2)
    return tmp_path / "bert"


def test_a_damaged_hf_folder_is_one_message_naming_the_file_or_field(cli, hf_folder):
    """Issue 28: corrupt weights, a hidden size that is no multiple of the head count, a folder
    without a tokenizer: each one message (exit 2) naming the file or field; the tokenizer used is said."""
    args = ["train", "--model", f"hf:{hf_folder}", "--weights", "hf:DEFAULT", "--data", DATA]
    args += ["--iterations", "1", "--batch-size", "8", "--no-progress"]
    code, _, err = cli(*args)
    assert code == 0, err
    said = rf"hf:{re.escape(str(hf_folder))}: tokenizer \w+ from {re.escape(str(hf_folder / 'tokenizer.json'))}, \d+ tokens"
    assert re.search(said, " ".join(err.split())), err
    import json

    config = json.loads((hf_folder / "config.json").read_text())
    (hf_folder / "config.json").write_text(json.dumps(config | {"num_attention_heads": 3}))
    code, _, err = cli(*args)
    text = " ".join(err.split())
    assert code == 2 and err.count("error:") == 1 and "Traceback" not in err
    assert f"{hf_folder / 'config.json'}: hidden_size 32 is not a multiple of num_attention_heads 3" in text
    (hf_folder / "config.json").write_text(json.dumps(config | {"vocab_size": 10**9}))
    code, _, err = cli(*args)
    assert code == 2 and "make a model of about 32,000," in " ".join(err.split()) and "GiB" in err
    (hf_folder / "config.json").write_text(json.dumps(config))
    weights = hf_folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])
    code, _, err = cli(*args)
    assert code == 2 and err.count("error:") == 1 and "Traceback" not in err
    assert f"{weights} is not a readable safetensors file" in " ".join(err.split())
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (hf_folder / name).unlink()
    code, _, err = cli(*args)
    text = " ".join(err.split())
    assert code == 2 and f"{hf_folder} holds no tokenizer" in text and "tokenizer.save_pretrained(" in text
