"""Every config file loads and validates; the CIFAR settings match the paper table."""

import ast
import importlib.util
import os

import pytest

from fastdfkd_jax import cli, data, errors, models
from fastdfkd_jax.config import checks as config_checks, files, schema
from fastdfkd_jax import synthesis

from conftest import CONFIGS, load_config_file

TEACHER_DATASETS = ["digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "svhn_cropped"]
CPU_DATASETS = ["digits", "mnist", "fashion_mnist", "cifar10"]


def _cifar_settings():
  """configs/fastdfkd_cifar.py's SETTINGS list (every documented ARG)."""
  spec = importlib.util.spec_from_file_location("_cifar_cfg",
                                                os.path.join(CONFIGS, "fastdfkd_cifar.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.SETTINGS


CIFAR_SETTINGS = _cifar_settings()


ALL_CONFIG_FILES = sorted(f for f in os.listdir(CONFIGS) if f.endswith(".py"))


@pytest.mark.parametrize("name", ALL_CONFIG_FILES)
def test_every_config_file_loads_with_its_default_arg(name):
  """Any configs/*.py (also ones added later) loads without ARG and validates."""
  c = load_config_file(name)
  if c.mode == "evaluate":
    c.checkpoint = "/nonexistent/dummy_checkpoint"
  config_checks.validate(c)


@pytest.mark.parametrize("dataset", TEACHER_DATASETS)
def test_teacher_configs(dataset):
  c = load_config_file("teacher.py", dataset)
  config_checks.validate(c)
  assert c.mode == "train_teacher" and c.dataset.name == dataset
  assert c.model in models.list_models()


@pytest.mark.parametrize("dataset", sorted(data.DATASETS))
def test_evaluate_configs(dataset):
  c = load_config_file("evaluate.py", dataset)
  assert c.mode == "evaluate" and c.dataset.name == dataset
  with pytest.raises(errors.UserError, match="checkpoint"):
    config_checks.validate(c)   # evaluate needs a checkpoint
  c.checkpoint = "/nonexistent/dummy_checkpoint"
  config_checks.validate(c)


THIN_DEFAULT_FILES = [os.path.join(CONFIGS, "default.py"), cli.DEFAULT_CONFIG]


@pytest.mark.parametrize("path", THIN_DEFAULT_FILES, ids=os.path.basename)
def test_default_config_files_return_config_libs(path):
  """configs/default.py and the embedded default (`main` without --config) are thin:
  their get_config() only returns schema.default_config(), the one source."""
  with open(path) as f:
    tree = ast.parse(f.read())
  functions = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
  assert [f.name for f in functions] == ["get_config"]
  assert ast.unparse(functions[0].body[-1]) == "return schema.default_config()"
  assert len(functions[0].body) == 1 + isinstance(functions[0].body[0], ast.Expr)
  spec = importlib.util.spec_from_file_location("_thin_default", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  assert module.get_config() == schema.default_config()


def test_base_and_default_configs_validate():
  config_checks.validate(schema.default_config())
  config_checks.validate(schema.base_config())


@pytest.mark.parametrize("dataset", CPU_DATASETS)
def test_fastdfkd_cpu_configs(dataset):
  c = load_config_file("fastdfkd_cpu.py", dataset)
  config_checks.validate(c)
  assert c.mode == "distill" and c.dataset.name == dataset
  assert c.teacher.train_if_missing


@pytest.mark.parametrize("k,lrs", [(2, (5e-3, 0.015)), (5, (3e-3, 0.01)), (10, (2e-3, 0.01))])
def test_fastdfkd_cpu_k_suffix_sets_the_papers_step_lrs(k, lrs):
  c = load_config_file("fastdfkd_cpu.py", f"cifar10-k{k}")
  config_checks.validate(c)
  assert c.k == k and (c.synth.lr_g, c.synth.lr_z) == lrs
  assert c.synth.ngf == load_config_file("fastdfkd_cpu.py", "cifar10").synth.ngf


def test_cpu_configs_state_their_meta_gradient():
  for arg in ("digits", "cifar10-k5"):
    assert load_config_file("fastdfkd_cpu.py", arg).synth.meta_grad == "param_diff"


@pytest.mark.parametrize("arg", ["cmi", "cmi_fast", "deepinversion", "deepinversion_fast",
                                 "cmi-cifar100-resnet34-resnet18"])
def test_batchwise_presets(arg):
  c = load_config_file("batchwise_cifar.py", arg)
  config_checks.validate(c)
  preset = arg.split("-")[0]
  assert c.method == preset.replace("_fast", "")
  assert (c.batch_size, c.epochs, c.warmup, c.kd.lr, c.kd.temperature) == (256, 200, 0, 0.1, 20)
  expected = {"cmi": (200, 1e-3, 0.5, 1.0, 1.0), "cmi_fast": (5, 1e-3, 0.5, 1.0, 1.0),
              "deepinversion": (1000, 0.1, 1.0, 10.0, 1.0),
              "deepinversion_fast": (10, 1.0, 1.0, 10.0, 1.0)}[preset]
  assert (c.k, c.synth.lr_g, c.synth.adv, c.synth.bn, c.synth.oh) == expected
  if c.method == "cmi":
    assert (c.cmi.cr, c.cmi.cr_T) == ((0.0 if preset == "cmi_fast" else 0.8), 0.2)
    assert (c.cmi.bank_size, c.cmi.n_neg, c.cmi.head_dim) == (40960, 4096, 256)
  with pytest.raises(ValueError, match="preset one of"):
    load_config_file("batchwise_cifar.py", "cmi-svhn")


@pytest.mark.parametrize("preset", ["cmi", "cmi_fast", "deepinversion", "deepinversion_fast"])
def test_batchwise_cpu_form_sees_the_fastdfkd_cpu_kd_images(preset):
  fast = load_config_file("fastdfkd_cpu.py", "cifar10")
  c = load_config_file("batchwise_cifar.py", f"{preset}-cpu")
  config_checks.validate(c)
  script = load_config_file("batchwise_cifar.py", preset)
  assert (c.method, c.k, c.synth.lr_g, c.synth.bn, c.cmi.cr) == (
      script.method, script.k, script.synth.lr_g, script.synth.bn, script.cmi.cr)
  assert c.warmup == 0 and (c.epochs * c.kd.steps * c.batch_size ==
                            (fast.epochs - fast.warmup) * fast.kd.steps * fast.batch_size)
  assert (c.kd.lr, c.kd.cosine_epochs, c.teacher.arch, c.student.arch, c.dtype) == (
      fast.kd.lr, fast.kd.cosine_epochs, fast.teacher.arch, fast.student.arch, fast.dtype)


def test_config_module_loads_a_sibling_config_file():
  module = files.config_module(os.path.join(CONFIGS, "anything.py"), "fastdfkd_cpu.py")
  assert module.get_config("cifar10") == load_config_file("fastdfkd_cpu.py", "cifar10")


def test_cifar_settings_list():
  assert len(CIFAR_SETTINGS) == 2 * 5 * 3
  assert "cifar100-wrn40_2-wrn16_2-k5" in CIFAR_SETTINGS


@pytest.mark.parametrize("setting", CIFAR_SETTINGS)
def test_fastdfkd_cifar_configs(setting):
  c = load_config_file("fastdfkd_cifar.py", setting)
  config_checks.validate(c)
  dataset, teacher, student, k = setting.split("-")
  assert (c.dataset.name, c.teacher.arch, c.student.arch, c.k) == (
      dataset, teacher, student, int(k[1:]))
  # Common settings of the release's scripts (reference doc, section 5).
  assert (c.method, c.epochs, c.warmup, c.batch_size) == ("fast_meta", 220, 20, 256)
  assert (c.kd.steps, c.kd.lr, c.kd.temperature) == (400, 0.2, 20.0)
  assert (c.kd.lr_min, c.kd.cosine_epochs) == (2e-4, 200)
  assert (c.synth.bn_mmt, c.synth.reset_l0, c.synth.reset_l0_epoch, c.seed) == (
      0.9, True, 140, 0)
  assert c.synth.bn == 10.0
  assert c.synth.meta_grad == "sum_inner_grads"   # every release script: --is_maml 1


# setting -> (lr_g, lr_z, adv, bn, oh): rows of the reference doc's table.
TABLE_ROWS = {
    "cifar100-wrn40_2-wrn16_2-k5": (3e-3, 0.01, 1.1, 10.0, 0.4),
    "cifar10-resnet34-resnet18-k2": (5e-3, 0.015, 1.33, 10.0, 0.5),
    "cifar10-resnet34-resnet18-k10": (2e-3, 0.01, 1.33, 10.0, 0.5),
    "cifar100-vgg11-resnet18-k5": (3e-3, 0.01, 1.0, 10.0, 0.5),
    "cifar10-wrn40_2-wrn16_1-k2": (5e-3, 0.015, 1.1, 10.0, 0.4),
    "cifar100-wrn40_2-wrn40_1-k10": (2e-3, 0.01, 1.1, 10.0, 0.4),
}


@pytest.mark.parametrize("setting", sorted(TABLE_ROWS))
def test_fastdfkd_cifar_matches_reference_table(setting):
  c = load_config_file("fastdfkd_cifar.py", setting)
  s = c.synth
  assert (s.lr_g, s.lr_z, s.adv, s.bn, s.oh) == TABLE_ROWS[setting]


@pytest.mark.parametrize("name,arg", [("teacher.py", "nope"), ("fastdfkd_cpu.py", "nope"),
                                      ("fastdfkd_cpu.py", "cifar10-k3"),
                                      ("fastdfkd_cifar.py", "cifar10-resnet34-vgg11-k5"),
                                      ("fastdfkd_cifar.py", "cifar10-resnet34-resnet18-k3"),
                                      ("fastdfkd_cifar.py", "svhn-resnet34-resnet18-k5")])
def test_bad_config_args(name, arg):
  with pytest.raises(ValueError, match=arg.split("-")[0] if name != "fastdfkd_cifar.py"
                     else "not a paper setting"):
    load_config_file(name, arg)


def _bad(field, value):
  c = schema.default_config()
  node = c
  *parents, leaf = field.split(".")
  for p in parents:
    node = node[p]
  node[leaf] = value
  return c


@pytest.mark.parametrize("field,value,choices", [
    ("method", "nope", synthesis.available()),
    ("mode", "trian_teacher", schema.MODES),
    ("synth.meta_grad", "maml", schema.META_GRADS),
    ("loop", "forever", schema.LOOPS),
    ("dtype", "float16", schema.DTYPES),
    ("kd.source", "imagenet", schema.KD_SOURCES),
    ("inner_unroll", "true", schema.INNER_LOOPS),
])
def test_bad_choice_names_field_and_choices(field, value, choices):
  with pytest.raises(errors.UserError) as e:
    config_checks.validate(_bad(field, value))
  msg = str(e.value)
  assert f"config.{field}" in msg and repr(value) in msg
  assert all(choice in msg for choice in choices), msg


def test_bad_choice_suggests_close_match():
  with pytest.raises(errors.UserError, match="did you mean 'train_teacher'"):
    config_checks.validate(_bad("mode", "trian_teacher"))


@pytest.mark.parametrize("field", ["student.arch", "teacher.arch"])
def test_unknown_model(field):
  with pytest.raises(errors.UserError) as e:
    config_checks.validate(_bad(field, "resnet999"))
  msg = str(e.value)
  assert "resnet999" in msg and f"config.{field}" in msg
  assert all(name in msg for name in ("resnet8", "resnet20", "wrn40_2", "lenet5"))


def test_unknown_model_train_teacher():
  c = load_config_file("teacher.py", "digits")
  c.model = "resnet999"
  with pytest.raises(errors.UserError, match=r"config\.model.*valid names: .*resnet8"):
    config_checks.validate(c)


def test_unknown_dataset():
  with pytest.raises(errors.UserError) as e:
    config_checks.validate(_bad("dataset.name", "imagenet7"))
  msg = str(e.value)
  assert "config.dataset.name" in msg and "imagenet7" in msg
  assert all(name in msg for name in data.DATASETS)


@pytest.mark.parametrize("field", ["batch_size", "epochs", "k", "kd.steps",
                                   "eval_batch_size", "kd.temperature"])
def test_non_positive(field):
  with pytest.raises(errors.UserError, match=rf"config\.{field}=0(\.0)? must be > 0"):
    config_checks.validate(_bad(field, 0))


def test_warmup_must_be_below_epochs():
  c = schema.default_config()
  c.warmup = c.epochs
  with pytest.raises(errors.UserError, match="config.warmup"):
    config_checks.validate(c)


def test_check_field_names_names_the_nearest():
  config_checks.check_field_names(["kd", "kd.lr", "synth.betas", "mode"])
  with pytest.raises(errors.UserError, match="did you mean synth.lr_g"):
    config_checks.check_field_names(["synth.lrg"])
  with pytest.raises(errors.UserError, match="top-level fields: .*batch_size.*mode"):
    config_checks.check_field_names(["zzzzzz"])


@pytest.mark.parametrize("name, nearest", [
    ("nosuch", []),                       # nothing close: no guess (was: 'epochs')
    ("kd.lrr", ["kd.lr"]),
    ("kd.temp", ["kd.temperature", "kd.steps"]),   # a prefix first
    ("teacher.chekpoint", ["teacher.checkpoint"]),
    ("batchsize", ["batch_size"]),
    ("dataset.dir", ["dataset.data_dir", "kd.dataset_dir", "dataset.cache_dir"]),
])
def test_the_nearest_field_ranks_whole_dotted_names(name, nearest):
  valid = config_checks.field_names(schema.base_config())
  assert config_checks.nearest_fields(name, valid) == nearest


def test_digits_refuses_a_data_dir_it_would_ignore():
  c = schema.default_config()
  c.dataset.data_dir = "/data/three_classes"
  with pytest.raises(errors.UserError, match="digits.*reads no files.*would be ignored"):
    config_checks.validate(c)


def test_a_config_file_that_is_no_file_names_the_folder(tmp_path):
  (tmp_path / "a.py").write_text("")
  with pytest.raises(errors.UserError, match=r"--config=.*nope.py:x: no such config file; "
                     r".* holds a.py"):
    cli.check_config_file(["main", f"--config={tmp_path}/nope.py:x"])
  cli.check_config_file(["main", "--config", f"{tmp_path}/a.py"])
