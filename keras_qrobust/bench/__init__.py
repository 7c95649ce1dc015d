"""Helpers for benchmark scripts: what ran, results files, resumable runs, a model cache.

The benchmarks in ``benchmarks/`` and the paper reproductions in ``examples/`` use these; so
can your own. Nothing here computes where a benchmark's folders are: the functions take the
results, cache or checkpoints folder (and the checkout ``root`` whose paths results files
must not carry) from the caller.

- :mod:`~keras_qrobust.bench.machine`: :func:`machine` (CPU, platform, package versions),
  :func:`code_version` (the git commit), :func:`timed`, :func:`log`;
- :mod:`~keras_qrobust.bench.results`: :func:`publish` / :func:`write_results`
  (``NAME.json`` and ``NAME.md`` without the machine's paths), :func:`targets_table`,
  :func:`run_description`, :func:`with_interval`;
- :mod:`~keras_qrobust.bench.records`: :func:`fingerprint` and :func:`source_digest`, the keys
  of :class:`FinishedResults` (kept results an interrupted run resumes from), and
  :func:`resumable` (an interrupted fit resumes from its last epoch);
- :mod:`~keras_qrobust.bench.model_cache`: :func:`save_cached` / :func:`load_cached` (trained
  models with their training record; committed checkpoints checked by SHA-256);
- :func:`write_json`, :func:`write_text`, :func:`atomic_path`: files written to a temporary
  sibling, then renamed into place.

    import keras_qrobust.bench as kb

    code = kb.code_version(".")
    data = {"command": "python my_bench.py", "machine": kb.machine(code), "accuracy": 0.91}
    kb.publish("my_bench", False, data, "# My benchmark\\n", folder="results", root=".")
"""

from .._io import atomic_path, write_json, write_text
from .machine import code_version, cpu, log, machine, timed
from .model_cache import file_sha256, load_cached, save_cached
from .records import FinishedResults, files_digest, fingerprint, resumable, source_digest
from .results import VERDICT, publish, run_description, targets_table, with_interval, without_machine_paths, \
    write_results

__all__ = [
    "atomic_path", "write_json", "write_text",
    "code_version", "cpu", "log", "machine", "timed",
    "file_sha256", "load_cached", "save_cached",
    "FinishedResults", "files_digest", "fingerprint", "resumable", "source_digest",
    "VERDICT", "publish", "run_description", "targets_table", "with_interval", "without_machine_paths",
    "write_results",
]
