"""Benchmark and demo option parsing: one typed object, and a one-line usage error for a bad value."""

from __future__ import annotations

import pytest

from max_whisper.bench import command, config
from max_whisper.bench.config import (
    PEER,
    Tolerances,
    parse_backend_options,
    parse_backends,
    parse_modes,
    parse_tolerances,
)
from max_whisper.errors import ExitCode, UsageError


def test_backends_tolerances_and_modes() -> None:
    assert parse_tolerances(None) == (0.0, {})
    assert parse_tolerances(["1%", "gpu=0.02", "max=0"]) == (0.01, {"gpu": 0.02, "max": 0.0})
    with pytest.raises(UsageError):
        parse_tolerances(["-1"])
    assert parse_backends(None) == ["cpu", "gpu", "max", PEER]
    assert parse_backends("max") == ["cpu", "max"]  # the reference is always there
    assert parse_backends("peer,max,cpu") == ["cpu", "max", PEER]
    assert parse_backends("gpu", add_reference=False) == ["gpu"]
    with pytest.raises(UsageError):
        parse_backends("tpu")
    assert [m.name for m in parse_modes(None)] == ["greedy"]
    assert [m.name for m in parse_modes("beam5, greedy,beam5")] == ["beam5", "greedy"]
    assert parse_modes(None, beam_size=3)[0].beam_size == 3
    assert parse_modes("greedy", temperature=0.4)[0].temperatures == (0.4,)
    for bad in ("fast", "beam0", "beam", ","):
        with pytest.raises(UsageError):
            parse_modes(bad)
    with pytest.raises(UsageError, match="--beam-size and --modes"):
        parse_modes("greedy", beam_size=5)
    assert Tolerances(per_backend={"gpu": 0.1}).for_backend("gpu") == 0.1
    assert Tolerances().for_backend(PEER) == 0.05


class FakeBackend:
    """A backend class as the registry returns it: keyword options and declared capabilities."""

    class capabilities:  # noqa: N801 - mirrors the attribute name
        devices = ("auto", "cpu", "gpu")
        dtypes = ("float32", "bfloat16")

    def __init__(
        self,
        model: str = "tiny.en",
        *,
        threads: int | None = None,
        device: str = "auto",
        dtype: str = "float32",
        speculate: bool = True,
    ) -> None:
        pass


def test_backend_options_are_checked_against_the_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    from max_whisper import backends

    monkeypatch.setattr(backends, "backend_class", lambda name: FakeBackend)
    assert parse_backend_options(["max.device=cpu", "max.dtype=bfloat16", "max.speculate=false"]) == {
        "max": {"device": "cpu", "dtype": "bfloat16", "speculate": False}
    }
    with pytest.raises(UsageError, match="no option 'decoder_dtype'.*device, dtype, speculate"):
        parse_backend_options(["max.decoder_dtype=float32"])
    with pytest.raises(UsageError, match="dtype must be one of float32, bfloat16"):
        parse_backend_options(["max.dtype=float16"])
    with pytest.raises(UsageError, match="BACKEND.KEY=VALUE"):
        parse_backend_options(["max.device"])
    with pytest.raises(UsageError, match="faster-whisper backend has no option"):
        parse_backend_options(["peer.beam=1"])


@pytest.mark.parametrize("flag", ["max", "max.=1", "cpu.device=gpu", "tpu.device=cpu"])
def test_a_bad_backend_opt_is_one_line_and_exit_2(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    # the cpu backend's real constructor is read: it takes no device option
    code = command.main(["--backends", "cpu", "--audio", __file__, "--backend-opt", flag])
    err = capsys.readouterr().err
    assert code == ExitCode.USAGE == 2
    assert err.count("\n") == 1 and err.startswith("max-whisper: error: ")
    assert "--backend-opt" in err or "unknown backend 'tpu'" in err


def test_options_object_from_flags(tmp_path) -> None:
    clip = tmp_path / "a.wav"
    clip.write_bytes(b"placeholder")
    args = command.build_parser().parse_args(
        [
            "--audio",
            str(clip),
            "--backends",
            "max",
            "--modes",
            "greedy,beam5",
            "--tolerance",
            "gpu=1%",
            "--peer-tolerance",
            "10%",
            "--runs",
            "2",
            "--save",
            str(tmp_path / "s.jsonl"),
        ]
    )
    options = command.options_from_args(args)
    assert options.backends == ("cpu", "max") and options.audio == (clip,)
    assert [m.name for m in options.modes] == ["greedy", "beam5"] and options.runs == 2
    assert options.tolerances == Tolerances(0.0, {"gpu": 0.01}, 0.1)
    assert options.threads == config.default_threads() and options.threads >= 1
    assert options.save == tmp_path / "s.jsonl" and options.manifest is None
    with pytest.raises(UsageError, match="no such audio file"):
        command.options_from_args(command.build_parser().parse_args(["--audio", str(tmp_path / "missing.wav")]))


def test_every_help_example_of_backend_opt_names_a_real_option() -> None:
    """The keys ``--help`` offers for --backend-opt are keyword options of the max backend's constructor."""
    import ast
    import re
    from pathlib import Path

    help_text = command.build_parser().format_help()
    offered = set(re.findall(r"max\.(\w+)=", " ".join(help_text.split())))
    assert offered, "the help shows no example"
    source = Path(config.__file__).parents[1] / "backends" / "whisper_max" / "backend.py"
    tree = ast.parse(source.read_text(encoding="utf-8"))
    init = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == "MaxBackend")
    ctor = next(n for n in init.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    assert offered <= {a.arg for a in ctor.args.kwonlyargs}
