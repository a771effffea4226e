"""Config loading, overrides and validation: every mistake names the key to fix."""
import os
import sys

import pytest

from mmjax import config as config_lib
from mmjax.config import UserError, cli, schema
from mmjax.data import synthetic

BASE = "configs/base.py"
CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def load(**overrides):
    config = config_lib.load_config_file(BASE)
    config_lib.apply_overrides(config, {k: str(v) for k, v in overrides.items()})
    return config


def test_base_config_is_locked_and_valid():
    config = load()
    config_lib.validate(config)
    assert config.is_locked
    assert set(config.modalities) == {"image", "text", "audio"}
    for key in ("fusion.kind", "total_steps", "batch_size", "seed", "mesh.data", "mesh.fsdp", "mesh.tensor", "data.train", "data.eval"):
        node = config
        for part in key.split("."):
            node = node[part]


@pytest.mark.parametrize(
    "text, expected",
    [("('image','text')", ("image", "text")), ("image,audio", ("image", "audio")), ("text", ("text",))],
)
def test_tuple_override(text, expected):
    assert load(modalities=text).modalities == expected


def test_typed_overrides():
    config = load(**{"total_steps": "7", "optim.lr": "0.5", "model.scan": "false", "mesh.data": "-1", "data.train": "/x"})
    assert (config.total_steps, config.optim.lr, config.model.scan, config.mesh.data, config.data.train) == (7, 0.5, False, -1, "/x")


def test_unknown_key_names_valid_keys():
    with pytest.raises(UserError, match=r"unknown key 'detph' in model.image; valid keys: .*depth"):
        load(**{"model.image.detph": "3"})
    with pytest.raises(UserError, match=r"unknown key 'nope' in config"):
        load(nope="1")


def test_wrong_type_names_key():
    with pytest.raises(UserError, match=r"--config.total_steps='abc': expected int"):
        load(total_steps="abc")
    with pytest.raises(UserError, match=r"--config.mesh is a group"):
        load(mesh="3")


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("modalities", "('image','smell')", "config.modalities: 'smell' is not one of"),
        ("modalities", "()", "config.modalities: needs at least one"),
        ("modalities", "image,image", "lists a modality twice"),
        ("total_steps", "0", "config.total_steps: must be a positive integer"),
        ("batch_size", "-4", "config.batch_size: must be a positive integer"),
        ("mesh.fsdp", "0", "config.mesh.fsdp: must be -1"),
        ("model.dtype", "float16", "config.model.dtype: 'float16' is not one of"),
        ("model.remat", "some", "config.model.remat"),
        ("optim.warmup_steps", "100000", "config.optim.warmup_steps"),
    ],
)
def test_invalid_values_name_the_key(key, value, message):
    config = load(**{key: value})
    with pytest.raises(UserError, match=message):
        config_lib.validate(config)


def test_split_config_args():
    spec, overrides, rest = config_lib.split_config_args(
        ["--config=configs/base.py:x", "--config.seed=3", "--workdir=w"]
    )
    assert spec == "configs/base.py:x" and overrides == {"seed": "3"} and rest == ["--workdir=w"]
    with pytest.raises(UserError, match="--config.seed=VALUE"):
        config_lib.split_config_args(["--config.seed"])


def test_missing_config_file():
    with pytest.raises(UserError, match="no such config file 'nope.py'"):
        config_lib.load_config_file("nope.py")


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"loss.task": "ranking"}, r"config.loss.task: 'ranking' is not one of classification"),
        ({"loss.contrastive": "hinge"}, r"config.loss.contrastive: 'hinge' is not one of none"),
        ({"loss.task": "none"}, r"config.loss.task: 'none' with config.loss.contrastive 'none' leaves nothing"),
        ({"modalities": "image,audio", "loss.contrastive": "softmax", "loss.contrastive_pair": "image,text"},
         r"config.loss.contrastive_pair: \('image', 'text'\) must name two different modalities"),
        ({"loss.contrastive": "sigmoid", "loss.contrastive_pair": "text,text"}, r"config.loss.contrastive_pair"),
        ({"modalities": "image,audio", "eval_without": "text"},
         r"config.eval_without: \('text',\) names \['text'\], which are not in config.modalities"),
        ({"loss.task": "none", "loss.contrastive": "sigmoid", "eval_without": "audio"},
         r"config.eval_without: needs a task loss"),
        ({"modality_dropout": "1.0"}, r"config.modality_dropout: must be in \[0, 1\), got 1.0"),
        ({"model.dropout": "-0.1"}, r"config.model.dropout: must be in \[0, 1\)"),
        ({"model.audio.channels": "()"}, r"config.model.audio.channels: must be a non-empty tuple of positive ints"),
        ({"model.image.kind": "resnet"}, r"config.model.image.kind: 'resnet' is not one of vit, cnn"),
        ({"fusion.kind": "late"}, r"config.fusion.kind: 'late' is not one of joint, concat, bottleneck, cross"),
        ({"fusion.pool": "max"}, r"config.fusion.pool: 'max' is not one of mean, flatten"),
        ({"fusion.num_latents": "0"}, r"config.fusion.num_latents: must be a positive integer"),
        ({"model.attention": "flash"}, r"config.model.attention: 'flash' is not one of"),
        ({"model.unroll": "maybe"}, r"config.model.unroll: 'maybe' is not one of"),
        ({"data.workers": "-1"}, r"config.data.workers: must be >= 0"),
        ({"data.train": ""}, r"config.data.train: is empty"),
        ({"data.synthetic.task": "easy"}, r"config.data.synthetic.task: 'easy' is not one of default"),
        ({"optim.lr": "0"}, r"config.optim.lr: must be > 0"),
        ({"mesh.data": "-1", "mesh.fsdp": "-1"}, r"config.mesh: at most one axis may be -1"),
    ],
)
def test_schema_checks_name_the_first_bad_key(overrides, message):
    config = load(**overrides)
    with pytest.raises(UserError, match=message):
        config_lib.validate(config)


def test_validation_finds_keys_a_config_file_added_or_dropped():
    config = config_lib.defaults()
    config.model.image.detph = 3
    with pytest.raises(UserError, match=r"config.model.image.detph: unknown key; valid keys: .*depth"):
        config_lib.validate(config)
    config = config_lib.defaults()
    del config.optim["eps"]
    with pytest.raises(UserError, match=r"config.optim.eps: missing"):
        config_lib.validate(config)
    config = config_lib.defaults()
    with config.ignore_type():
        config.total_steps = 1.5
    with pytest.raises(UserError, match=r"config.total_steps: must be int, got 1.5"):
        config_lib.validate(config)


def test_schema_defaults_are_base_py_and_every_key_has_a_doc():
    assert config_lib.load_config_file(BASE).to_dict() == config_lib.defaults().to_dict()

    def keys(group):
        for item in group.keys.values():
            yield from keys(item) if isinstance(item, schema.Group) else [item]

    assert all(key.doc for key in keys(schema.SCHEMA))
    assert set(schema.SYNTHETIC_TASKS) == set(synthetic.SYNTHETIC_TASKS)


# ---------------------------------------------------------------- evaluators
def test_an_evaluator_on_the_command_line_creates_its_entry():
    config = load(**{"evals.noaudio.modalities": "('audio',)", "evals.noaudio.kind": "without_modality",
                     "evals.noaudio.data": "/data/other", "evals.more.every": "7"})
    config_lib.validate(config)
    assert config.evals.noaudio.to_dict() == dict(kind="without_modality", data="/data/other", every=0,
                                                  prefix="", modalities=("audio",))
    assert config.evals.more.to_dict() == dict(kind="task", data="", every=7, prefix="")
    assert config.evals.eval.prefix == "eval/"  # the default evaluator is still there
    config_lib.apply_overrides(config, {"evals.more.kind": "without_modality"})  # keeps every=7
    assert (config.evals.more.every, config.evals.more.modalities) == (7, ("audio",))
    with pytest.raises(UserError, match=r"--config.evals.x.kind='caption': not one of task, without_modality, "
                                        r"retrieval, zeroshot, linear_probe"):
        load(**{"evals.x.kind": "caption"})
    with pytest.raises(UserError, match=r"unknown key 'modalities' in evals.y; valid keys: data, every, kind"):
        load(**{"evals.y.modalities": "audio"})
    with pytest.raises(UserError, match=r"unknown key 'evalz' in config"):
        load(**{"evalz.y.kind": "task"})


def test_evaluator_entries_are_checked_against_their_kind():
    config = load(**{"evals.na.kind": "without_modality", "modalities": "image,text", "evals.na.modalities": "audio"})
    with pytest.raises(UserError, match=r"config.evals.na.modalities: \('audio',\) names \['audio'\]"):
        config_lib.validate(config)
    config = load(**{"evals.eval.every": "-2"})
    with pytest.raises(UserError, match=r"config.evals.eval.every: must be >= 0"):
        config_lib.validate(config)


def test_a_config_file_adds_evaluators_and_imports_its_neighbours(tmp_path):
    folder = tmp_path / "myconfigs"
    folder.mkdir()
    (folder / "common.py").write_text("STEPS = 777\n")
    (folder / "run.py").write_text(
        "from mmjax import config as config_lib\n"
        "from myconfigs import common\n\n"
        "def get_config(arg=None):\n"
        "    c = config_lib.defaults()\n"
        "    c.total_steps = common.STEPS\n"
        "    c.evals.other = dict(kind='without_modality', data=arg or '')\n"
        "    return c\n")
    config = config_lib.load_config_file(f"{folder / 'run.py'}:/data/b")
    config_lib.validate(config)
    assert config.total_steps == 777 and config.is_locked
    assert config.evals.other.to_dict() == dict(kind="without_modality", data="/data/b", every=0, prefix="",
                                                modalities=("audio",))


# ---------------------------------------------------------------- upgrade
def test_upgrade_fills_what_an_older_run_lacked_and_keeps_what_it_set():
    old = config_lib.defaults().to_dict()
    for group, key in (("optim", "kind"), ("optim", "eps"), ("model", "unroll"), ("model", "attention"),
                       ("fusion", "modality_embed"), (None, "evals"), (None, "frozen"), ("data", "prefetch")):
        del (old[group] if group else old)[key]
    del old["model"]["text"]["lookup"]
    old["total_steps"], old["modalities"] = 400, ["image", "text"]  # JSON metadata keeps tuples as lists
    config = config_lib.upgrade(old)
    config_lib.validate(config)
    assert config.total_steps == 400 and config.modalities == ("image", "text")
    expected = config_lib.defaults()
    expected.total_steps, expected.modalities = 400, ("image", "text")
    assert config.to_dict() == expected.to_dict()


def test_upgrade_keeps_an_older_runs_evaluators_and_refuses_unknown_keys():
    old = config_lib.defaults().to_dict()
    old["evals"]["na"] = {"kind": "without_modality", "modalities": ["text"]}
    config = config_lib.upgrade(old)
    assert config.evals.na.modalities == ("text",) and config.evals.na.every == 0
    old["model"]["image"]["kernl"] = 3
    with pytest.raises(UserError, match=r"keys this mmjax does not know: model.image.kernl"):
        config_lib.upgrade(old)


def test_upgrade_renames_moved_keys(monkeypatch):
    upgrade_lib = sys.modules["mmjax.config.upgrade"]  # the package exports its function by that name
    monkeypatch.setitem(upgrade_lib.RENAMED, "optim.learning_rate", "optim.lr")
    old = config_lib.defaults().to_dict()
    old["optim"]["learning_rate"] = old["optim"].pop("lr") * 2
    assert config_lib.upgrade(old).optim.lr == 2e-3


# ---------------------------------------------------------------- command line
def test_config_file_in_space_form():
    spec, overrides, rest = config_lib.split_config_args(["--config", "configs/seed.py:x", "--config.seed=1", "--w"])
    assert (spec, overrides, rest) == ("configs/seed.py:x", {"seed": "1"}, ["--w"])
    with pytest.raises(UserError, match="--config needs a file"):
        config_lib.split_config_args(["--config"])


def test_config_help_lists_every_key_with_its_default():
    text = cli.config_help()

    def dotted(group, prefix=""):
        for name, item in group.keys.items():
            if isinstance(item, schema.Group):
                yield from dotted(item, f"{prefix}{name}.")
            else:
                yield f"{prefix}{name}", item

    listed = dict(dotted(schema.SCHEMA))
    assert len(listed) > 100
    for key, item in listed.items():
        assert f"  {key} = {item.default!r}\n" in text, key
    for key in ("kind", "data", "every", "prefix", "modalities"):
        assert f"evals.NAME.{key} = " in text
    assert "[model.audio]" in text and "[loss]" in text


@pytest.mark.parametrize("name", sorted(f[:-3] for f in os.listdir(CONFIGS) if f.endswith(".py")))
def test_every_shipped_config_loads_and_validates(name):
    config_lib.validate(config_lib.load_config_file(os.path.join(CONFIGS, f"{name}.py")))


def test_the_contrastive_config_trains_all_three_pairs_through_attention_probes():
    config = config_lib.load_config_file(os.path.join(CONFIGS, "contrastive.py"))
    assert schema.contrastive_pairs(config.loss) == (("image", "text", 1.0), ("audio", "text", 1.0),
                                                     ("image", "audio", 1.0))
    assert config.loss.contrastive == "sigmoid" and config.loss.contrastive_pool == "map"
    assert config.data.synthetic.task == "paired" and config.evals.retrieval.kind == "retrieval"
