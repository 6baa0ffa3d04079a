"""Every stack module starts one stack of its own (fixture `stack`, with the module's fast policies) and
marks itself `pytest.mark.usefixtures("calm_dependencies")`: each test gets a Toxiproxy client for it and
a calm start: no toxic, no fault, every circuit closed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from chaosproxy.client import ToxiproxyClient
from tests.chaos.helpers import calm
from tests.stack import RunningStack


@pytest.fixture(scope="module")
def chaos(stack: RunningStack) -> Iterator[ToxiproxyClient]:
    with ToxiproxyClient(stack.chaos) as client:
        yield client


@pytest.fixture
def calm_dependencies(stack: RunningStack, chaos: ToxiproxyClient) -> Iterator[None]:
    calm(stack, chaos)
    yield
    # Also after: a test's faults must not outlive it, even when the next module-scoped fixture runs first.
    calm(stack, chaos)
