__version__ = "0.1.0"


def code_commit() -> "str | None":
    """The git commit of the checkout this package runs from, when it runs from one (an
    installed wheel has none): results and reports record it beside ``__version__``."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
