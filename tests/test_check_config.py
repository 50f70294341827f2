"""Budget files: pyproject.toml / --config parsing, strict keys with the line at fault, globs."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecompress.check.config import find_pyproject, glob_match, load_config
from edgecompress.errors import ConfigError

PYPROJECT = '''\
[project]
name = "demo"

[tool.edgecompress]
fail_on_latency = false

[tool.edgecompress.budgets."build/*.onnx"]   # the deployed model
exclude = "*.dense.onnx"
max_size = "2 MB"
max_params = "200k"
max_growth = "5%"
noise_floor = "1 KiB"
min_accuracy = 0.97
max_accuracy_drop = 0.5
max_ops = { MatMul = 6 }
max_latency_p50_ms = 1.0
max_peak_rss = "64 MiB"
batch = 1

[tool.edgecompress.budgets."build/*.int8.onnx"]
max_size = 524288
fail_on_latency = true
max_latency_p99_ms = 2
'''


def write(folder: Path, text: str, name: str = "pyproject.toml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def test_pyproject_budgets_are_parsed(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, PYPROJECT))
    assert config.base_dir == tmp_path
    first, second = config.budgets
    assert first.pattern == "build/*.onnx" and first.line == 7
    assert first.max_size == 2_000_000 and first.max_params == 200_000
    assert first.max_growth == pytest.approx(0.05) and first.noise_floor == 1024
    assert first.min_accuracy == 0.97 and first.max_accuracy_drop == 0.5
    assert first.max_ops == (("MatMul", 6),)
    assert first.max_latency_ms == (("p50", 1.0),)
    assert first.max_peak_rss == 64 * 2**20 and first.batch == 1
    assert first.exclude == ("*.dense.onnx",) and first.fail_on_latency is None
    assert first.binary_keys == {"noise_floor", "max_peak_rss"}
    assert first.line_of("max_size") == 9 and first.line_of("max_ops.MatMul") == 15
    assert first.line_of("nothing") == 7
    assert second.max_size == 524288 and second.fail_on_latency is True
    assert second.max_latency_ms == (("p99", 2.0),)


def test_pyproject_is_found_from_a_subfolder(tmp_path: Path) -> None:
    write(tmp_path, PYPROJECT)
    (tmp_path / ".git").mkdir()
    sub = tmp_path / "src" / "pkg"
    sub.mkdir(parents=True)
    assert find_pyproject(sub) == tmp_path / "pyproject.toml"
    assert load_config(cwd=sub).source == tmp_path / "pyproject.toml"


def test_invalid_pyproject_found_by_walking_up_is_reported_not_skipped(tmp_path: Path) -> None:
    """A syntax error in the nearest pyproject.toml names its line; the walk does not go on to
    a parent project's valid file."""
    write(tmp_path, PYPROJECT)  # a valid outer project with budgets
    inner = tmp_path / "inner"
    (inner / "src").mkdir(parents=True)
    (inner / ".git").mkdir()
    (inner / "pyproject.toml").write_text('[project]\nname = "x"\n\n[tool.edgecompress\n', encoding="utf-8")
    assert find_pyproject(inner / "src") == inner / "pyproject.toml"
    with pytest.raises(ConfigError, match=r"pyproject\.toml:4: invalid TOML"):
        load_config(cwd=inner / "src")


def test_pyproject_without_the_tool_table_is_skipped(tmp_path: Path) -> None:
    (tmp_path / ".git").mkdir()
    write(tmp_path, "[project]\nname = 'x'\n")
    assert find_pyproject(tmp_path) is None
    with pytest.raises(ConfigError, match="no budgets"):
        load_config(cwd=tmp_path)


def test_plain_config_file_without_tool_prefix(tmp_path: Path) -> None:
    path = write(tmp_path, '[budgets."m.onnx"]\nmax_size = "1 kB"\n', "budgets.toml")
    config = load_config(path)
    assert config.budgets[0].max_size == 1000 and config.budgets[0].line == 1


def test_config_path_is_relative_to_cwd(tmp_path: Path) -> None:
    (tmp_path / "ci").mkdir()
    write(tmp_path / "ci", '[budgets."m.onnx"]\nmax_size = 10\n', "b.toml")
    config = load_config("ci/b.toml", cwd=tmp_path)
    assert config.base_dir == tmp_path / "ci"


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_unreadable_config_file(tmp_path: Path) -> None:
    path = tmp_path / "b.toml"
    path.write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(path)


@pytest.mark.parametrize(("text", "line", "message"), [
    ('[budgets."m.onnx"]\nmax_size = "2 MB"\nmax_sise = "3 MB"\n', 3, "did you mean 'max_size'"),
    ('[budgets."m.onnx"]\nzzz = 1\n', 2, "(known: max_size, max_params,"),
    ('[budgets."m.onnx"]\nmax_size = "2 MBs"\n', 2, "unknown unit 'MBs'"),
    ('[budgets."m.onnx"]\nmax_size = "-2 MB"\n', 2, "must not be negative"),
    ('[budgets."m.onnx"]\nmax_growth = 5\n', 2, "ambiguous"),
    ('[budgets."m.onnx"]\nmin_accuracy = 97\n', 2, "write 0.97"),
    ('[budgets."m.onnx"]\nmax_accuracy_drop = "0.5%"\n', 2, "points"),
    ('[budgets."m.onnx"]\nmax_latency_p50_ms = -1\n', 2, "milliseconds"),
    ('[budgets."m.onnx"]\nmax_size = 1\nbatch = 0\n', 3, "batch"),
    ('[budgets."m.onnx"]\nmax_size = 1\nfail_on_latency = "yes"\n', 3, "true or false"),
    ('[budgets."m.onnx"]\nmax_size = 1\n\n[budgets."n.onnx"]\nmax_ops = { MatMul = "six" }\n', 5, "max_ops.MatMul"),
    ('[budgets."m.onnx"]\nmax_ops = 3\n', 2, "table of op type"),
    ('[budgets."m.onnx"]\nmax_ops = { Gemm = 2, Matmul = 6 }\n', 2, "did you mean 'MatMul'"),
    ('[budgets."m.onnx"]\nexclude = 3\nmax_size = 1\n', 2, "string or a list"),
    ('[budgets."m.onnx"]\nbatch = 1\n', 1, "sets no limit"),
    ('budget = 1\n[budgets."m.onnx"]\nmax_size = 1\n', 1, "did you mean 'budgets'"),
    ('fail_on_latency = 1\n[budgets."m.onnx"]\nmax_size = 1\n', 1, "true or false"),
    ('fail_on_latency = true\n', None, "no budgets"),
    ('budgets = 3\n', 1, "one table per glob"),
    ('[budgets]\n"m.onnx" = 3\n', 2, "table of limits"),
    ('[budgets."m.onnx"]\nmax_size = \n', 2, "invalid TOML"),
    ('[budgets."m.onnx"\nmax_size = 1\n', 1, "invalid TOML"),
])
def test_bad_config_names_the_line(tmp_path: Path, text: str, line: int | None, message: str) -> None:
    path = write(tmp_path, text, "budgets.toml")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text_of_error = str(info.value)
    assert message in text_of_error
    if line is not None:
        assert text_of_error.startswith(f"{path}:{line}: ") or f"budgets.toml:{line}: " in text_of_error
        assert text.splitlines()[line - 1].strip() in text_of_error  # the source line is quoted


def test_unknown_key_in_pyproject_gives_the_pyproject_line(tmp_path: Path) -> None:
    text = PYPROJECT.replace("min_accuracy = 0.97", "min_acuracy = 0.97")
    with pytest.raises(ConfigError, match=r"pyproject.toml:13: unknown key 'min_acuracy'.*did you mean 'min_accuracy'"):
        load_config(write(tmp_path, text))


def test_inline_table_keys_are_located(tmp_path: Path) -> None:
    text = '[tool.edgecompress]\nfail_on_latency = false\nbudgets = { "m.onnx" = { max_size = 1, max_sizes = 2 } }\n'
    with pytest.raises(ConfigError, match=r"pyproject.toml:3: unknown key 'max_sizes'"):
        load_config(write(tmp_path, text))


def test_custom_domain_ops_are_allowed(tmp_path: Path) -> None:
    path = write(tmp_path, '[budgets."m.onnx"]\nmax_ops = { "com.microsoft.FusedMatMul" = 2 }\n', "b.toml")
    assert load_config(path).budgets[0].max_ops == (("com.microsoft.FusedMatMul", 2),)


def test_sections_of_other_commands_are_ignored(tmp_path: Path) -> None:
    text = '[tool.edgecompress.build]\npolicy = "energy"\n[tool.edgecompress.budgets."m.onnx"]\nmax_size = 1\n'
    assert load_config(write(tmp_path, text)).budgets[0].max_size == 1


def test_paths_and_baseline_keys(tmp_path: Path) -> None:
    text = ('paths = ["build/build.json"]\nbaseline = "main/build.json"\n'
            '[budgets."build/m.onnx"]\nmax_size = 1\n')
    config = load_config(write(tmp_path, text, "b.toml"))
    assert config.paths == ("build/build.json",)
    assert config.baselines == (tmp_path / "main" / "build.json",)


@pytest.mark.parametrize(("pattern", "path", "hit"), [
    ("build/*.onnx", "build/model.onnx", True),
    ("build/*.onnx", "build/sub/model.onnx", False),
    ("build/*.onnx", "other/model.onnx", False),
    ("*.onnx", "model.onnx", True),
    ("*.onnx", "build/model.onnx", False),
    ("build/**/*.onnx", "build/model.onnx", True),
    ("build/**/*.onnx", "build/a/b/model.onnx", True),
    ("**/model.onnx", "x/y/model.onnx", True),
    ("build/model.?.onnx", "build/model.1.onnx", True),
    ("build/model.[ab].onnx", "build/model.b.onnx", True),
    ("build/model.[!ab].onnx", "build/model.b.onnx", False),
    ("./build/model.onnx", "build/model.onnx", True),
    ("build/model+1.onnx", "build/model+1.onnx", True),
])
def test_glob_match(tmp_path: Path, pattern: str, path: str, hit: bool) -> None:
    assert glob_match(pattern, tmp_path / path, tmp_path) is hit


def test_absolute_glob(tmp_path: Path) -> None:
    assert glob_match(f"{tmp_path}/b/*.onnx", tmp_path / "b" / "m.onnx", Path("/elsewhere"))


def test_exclude_without_slash_matches_the_file_name(tmp_path: Path) -> None:
    text = '[budgets."build/**"]\nexclude = ["*.dense.onnx", "build/old/*"]\nmax_size = 1\n'
    budget = load_config(write(tmp_path, text, "b.toml")).budgets[0]
    assert budget.matches(tmp_path / "build" / "m.onnx")
    assert budget.matches(tmp_path / "build" / "x" / "m.int8.onnx")
    assert not budget.matches(tmp_path / "build" / "x" / "m.dense.onnx")
    assert not budget.matches(tmp_path / "build" / "old" / "m.onnx")
