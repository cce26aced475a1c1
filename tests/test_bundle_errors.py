"""The message that ends a failing bundle run (issue #21 item 12): the error below MONAI's config wrappers."""

from __future__ import annotations

import sys

from monai_genaug.bundle_errors import bundle_cause, install_bundle_excepthook, is_bundle_command, is_config_wrapper


def _chain(*errors: BaseException) -> BaseException:
    """errors[0] raised from errors[1] raised from ... (outermost first)."""
    for outer, inner in zip(errors, errors[1:]):
        outer.__cause__ = inner
    return errors[0]


def test_bundle_cause_skips_monai_wrappers_only():
    own = FileNotFoundError("dataset_dir '/x' does not exist; pass ...")
    chain = _chain(RuntimeError("Failed to instantiate ConfigComponent"), RuntimeError(
        "Failed to instantiate component 'f' with keywords: a"), own)
    assert bundle_cause(chain) is own
    wrapped = ValueError("'evil.pt' is not a readable weights-only checkpoint")  # the project's message over torch's
    assert bundle_cause(_chain(RuntimeError("Failed to evaluate x"), wrapped, TypeError("pickle"))) is wrapped
    plain = ValueError("no wrapper")
    assert bundle_cause(plain) is plain and not is_config_wrapper(plain)
    assert bundle_cause(_chain(RuntimeError("other"), ValueError("x"))).args == ("other",)


def test_excepthook_prints_the_cause_last(capsys, monkeypatch):
    calls = []
    monkeypatch.setattr(sys, "excepthook", lambda *a: calls.append(a))
    assert not is_bundle_command(["pytest"]) and is_bundle_command(["/x/site-packages/monai/bundle/__main__.py"])
    assert install_bundle_excepthook(force=True)
    own = ValueError("max_items=0 selects no items")
    err = _chain(RuntimeError("Failed to instantiate component 'x' with keywords: a"), own)
    sys.excepthook(type(err), err, None)
    assert calls and calls[0][1] is err  # the original report first
    last = [line for line in capsys.readouterr().err.splitlines() if line.strip()][-1]
    assert last == "monai_genaug: the bundle run failed: ValueError: max_items=0 selects no items"
