"""The hook into `max serve` is in place, or `max serve` does not start.

No server: the app `max serve` would serve is built without a model
(`tests/max_serve_app.py`), in a fresh interpreter that imports the
package as `max serve` does.
"""

from __future__ import annotations

import importlib
import sys

import click
import pytest

from gpt2_lmhead_model.serving import install
from gpt2_lmhead_model.serving.install import (
    APP_FACTORY,
    LAUNCHER,
    WRITTEN_AGAINST,
    ServingInstallError,
    max_version,
    patch_app_factory,
)
from tests.max_serve_app import run_probe


def test_max_serve_app_gets_the_guard_then_the_request_checks(max_serve_app):
    assert max_serve_app["factory_installed"]
    # Outermost first: nothing reaches the checks (or MAX) past the guard.
    assert max_serve_app["middleware"][:2] == ["RouteGuard", "OpenAIRequestChecks"]


def test_moved_factory_stops_max_serve_with_one_line():
    result = run_probe("--factory-moved")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if f"{LAUNCHER}." in line]
    assert len(lines) == 1, result.stderr[-3000:]
    assert f"{APP_FACTORY}" in lines[0]
    assert f"MAX {max_version()}" in lines[0]
    assert f"written against MAX {WRITTEN_AGAINST}" in lines[0]


@pytest.fixture
def launcher(monkeypatch):
    """MAX's launcher module, with whatever a test patches restored after."""
    module = importlib.import_module(LAUNCHER)
    monkeypatch.setattr(module, APP_FACTORY, getattr(module, APP_FACTORY))
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    return module


def test_patched_factory_configures_the_app(launcher, monkeypatch):
    def fastapi_app(*args, **kwargs):
        return "app"

    monkeypatch.setattr(launcher, APP_FACTORY, fastapi_app)
    seen = []
    patch_app_factory(seen.append)
    assert install.is_installed(launcher)
    assert getattr(launcher, APP_FACTORY)() == "app"
    assert seen == ["app"]
    patch_app_factory(seen.append)  # a second import wraps nothing twice
    getattr(launcher, APP_FACTORY)()
    assert seen == ["app", "app"]


def test_factory_moved_is_an_error_naming_symbol_and_version(launcher, monkeypatch):
    monkeypatch.delattr(launcher, APP_FACTORY)
    with pytest.raises(ServingInstallError) as error:
        patch_app_factory(lambda app: None)
    message = str(error.value)
    assert f"{LAUNCHER}.{APP_FACTORY}" in message
    assert f"MAX {max_version()}" in message and WRITTEN_AGAINST in message


def test_launcher_not_calling_the_factory_global_is_an_error(launcher, monkeypatch):
    def serve_api_server_and_model_worker(settings, pipeline_args):
        return settings, pipeline_args  # builds its app some other way

    monkeypatch.setattr(
        launcher, install.LAUNCHER_SERVE, serve_api_server_and_model_worker
    )
    with pytest.raises(ServingInstallError, match=install.LAUNCHER_SERVE):
        patch_app_factory(lambda app: None)
    assert not install.is_installed(launcher)


def max_serve_context(**params) -> click.Context:
    """A click context as MAX's `max serve` command has while it runs."""

    def cli_serve(**kwargs):
        return kwargs

    cli_serve.__module__ = "max._entrypoints.pipelines"
    context = click.Context(click.Command("serve", callback=cli_serve))
    context.params.update(params)
    return context


def test_launcher_moved_is_an_error_inside_max_serve(monkeypatch):
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.setattr(install, "LAUNCHER", "max._entrypoints.cli.moved_serve")
    with max_serve_context(), pytest.raises(ServingInstallError) as error:
        patch_app_factory(lambda app: None)
    assert "max._entrypoints.cli.moved_serve" in str(error.value)


def test_cascade_server_is_refused(launcher):
    with (
        max_serve_context(cascade=True),
        pytest.raises(ServingInstallError, match="--cascade"),
    ):
        patch_app_factory(lambda app: None)
    assert not install.is_installed(launcher)


def test_outside_max_serve_nothing_is_patched(monkeypatch):
    monkeypatch.delitem(sys.modules, LAUNCHER, raising=False)
    hook = sys.excepthook
    configured = []
    patch_app_factory(configured.append)
    assert sys.excepthook is hook and not configured
    with click.Context(click.Command("generate")):
        patch_app_factory(configured.append)
    assert sys.excepthook is hook and not configured


def test_start_up_error_wrapped_by_max_prints_its_own_line(capsys, monkeypatch):
    monkeypatch.delenv("GPT2_MAX_TRACEBACK", raising=False)
    try:
        try:
            raise ServingInstallError("the cause, by name")
        except ServingInstallError as e:
            raise ValueError("Failed to import custom model from: x") from e
    except ValueError as wrapped:
        install._one_line_start_errors(
            sys.__excepthook__, ValueError, wrapped, wrapped.__traceback__
        )
    err = capsys.readouterr().err
    assert err.splitlines()[0] == "error: the cause, by name"
    assert "Traceback" not in err
